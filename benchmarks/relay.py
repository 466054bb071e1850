"""The relay's SSE fan-out against Pushpin, side by side, on loopback.

Server A is our relay (`relay.app.create_app` under uvicorn in one process, configured as
`python -m relay` configures it), its bus replaced by a loopback control socket that
takes real `worker.status.updated` CloudEvents. Server B is Debian's Pushpin in front of
a trivial GRIP origin; the same events are published to its HTTP publish endpoint,
pre-framed with exactly the bytes our relay sends. SSE clients are raw asyncio sockets in
separate worker processes. Every event carries its send time, so latency is receive
time - send time on the one machine clock.

Scenarios, per server (each group on a freshly started server):
  idle   hold 100 / 1,000 / 10,000 connections: RSS per connection, all still connected?
         (one event to everyone at the end proves it)
  burst  N events as fast as possible to C clients: deliveries/s, all delivered?
  steady 20 events/s for ~10 s to C clients: p50/p99 latency, all delivered?
plus the server's CPU seconds in burst and steady.

Usage: python -m benchmarks.relay [--quick] [--clients C] [--skip-pushpin] [--out FILE]
Pushpin: apt-get install -y pushpin (Debian bookworm ships 1.36); no service needs to run.

Diagnostics (relay only; they change what they measure, so not for the headline table):
  --diagnose       live objects by type and tracemalloc by source line, per idle connection
  --profile-relay  cProfile of the event loop's thread during burst and steady
  --relay-gc off | freeze | g0,g1,g2    what-if garbage-collector settings
  --relay-extra-path DIR                what-if, e.g. a dir with uvloop + httptools
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.relaybench.clients import ClientPool
from benchmarks.relaybench.common import (
    CLK_TCK,
    STREAM_PATH,
    bench_events,
    cpu_seconds,
    cpu_split,
    machine_busy_jiffies,
    percentile,
    raise_nofile,
    rss_kib,
)
from benchmarks.relaybench.report import render
from benchmarks.relaybench.servers import PushpinServer, RelayServer, nofile_report

PHASE_IDLE_CHECK, PHASE_BURST, PHASE_STEADY = 1, 2, 3
INSTALL_HINT = (
    "Pushpin is not installed. On Debian/Ubuntu: `apt-get update && apt-get install -y "
    "pushpin` (the package's service need not run: the benchmark starts its own instance "
    "with its own config). Running the relay side only."
)


@dataclass
class Plan:
    clients: int = 1000
    burst_events: int = 200
    steady_rate: float = 20.0
    steady_seconds: float = 10.0
    idle_levels: list[int] = field(default_factory=lambda: [100, 1000, 10000])
    batch: int = 10  # events per publish in the burst (SQS hands the relay ≤ 10 at a time)
    workers: int = 2
    connect_rate: float = 1000.0  # new connections per second, all workers together
    connect_concurrency: int = 32  # connects in flight per worker
    connect_timeout: float = 30.0
    settle_seconds: float = 2.0
    idle_hold_seconds: float = 5.0
    stall_seconds: float = 5.0
    message_rate: int = 1_000_000
    message_hwm: int = 1_000_000
    quiet_cores: float = 0.3  # CPU used elsewhere on the machine that counts as quiet
    quiet_wait_seconds: float = 60.0  # the longest wait for that, per scenario
    profile_relay: bool = False
    diagnose: bool = False


def summarize_latency(latencies_ns: Any) -> dict[str, float | None]:
    ordered = sorted(latencies_ns)
    ms = 1e6
    return {
        "p50_ms": _ms(percentile(ordered, 0.50), ms),
        "p90_ms": _ms(percentile(ordered, 0.90), ms),
        "p99_ms": _ms(percentile(ordered, 0.99), ms),
        "max_ms": _ms(float(ordered[-1]) if ordered else None, ms),
    }


def _ms(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value / scale, 2)


def wait_for_deliveries(
    pool: ClientPool, expected: int, stall_seconds: float, max_seconds: float
) -> str:
    """Poll the workers until `expected` frames arrived, or nothing arrives for a while."""
    started = time.monotonic()
    last_total, last_change = -1, started
    while True:
        total = pool.progress()["total"]
        now = time.monotonic()
        if total >= expected:
            return "complete"
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change > stall_seconds:
            return "stalled"
        if now - started > max_seconds:
            return "timeout"
        time.sleep(0.1)


class Meter:
    """Server CPU, client CPU and machine CPU over a window."""

    def __init__(self, server: Any, pool: ClientPool) -> None:
        self.server, self.pool = server, pool
        self.server_cpu = cpu_seconds(server.pids())
        self.server_split = cpu_split(server.pids())
        self.client_cpu = cpu_seconds(pool.pids)
        self.machine = machine_busy_jiffies()
        self.wall = time.monotonic()

    def read(self) -> dict[str, float]:
        busy, total = machine_busy_jiffies()
        busy0, total0 = self.machine
        server = cpu_seconds(self.server.pids()) - self.server_cpu
        user, system = (
            b - a for a, b in zip(self.server_split, cpu_split(self.server.pids()), strict=True)
        )
        clients = cpu_seconds(self.pool.pids) - self.client_cpu
        machine = (busy - busy0) / CLK_TCK
        return {
            "server_cpu_s": round(server, 3),
            "server_user_s": round(user, 3),
            "server_system_s": round(system, 3),
            "client_cpu_s": round(clients, 3),
            # Everything else on the machine, this orchestrator included (noise).
            "other_cpu_s": round(max(0.0, machine - server - clients), 3),
            "machine_busy_pct": round(100 * (busy - busy0) / max(1, total - total0), 1),
            "wall_s": round(time.monotonic() - self.wall, 3),
        }


def wait_for_quiet(server: Any, pool: ClientPool, plan: Plan, label: str) -> dict[str, Any]:
    """Wait (bounded) until the rest of the machine uses < `quiet_cores` of CPU.

    This is a shared 2-core box: other jobs (a test suite, say) can take a whole core
    and decide a latency figure. What was waited for and found is recorded either way.
    """
    ours = [os.getpid(), *pool.pids, *server.pids()]
    started = time.monotonic()
    other = 0.0
    for _ in range(1000):
        before_ours, before = cpu_seconds(ours), machine_busy_jiffies()[0]
        time.sleep(1.0)
        machine = (machine_busy_jiffies()[0] - before) / CLK_TCK
        other = max(0.0, machine - (cpu_seconds(ours) - before_ours))
        waited = time.monotonic() - started
        if other < plan.quiet_cores or waited >= plan.quiet_wait_seconds:
            break
    waited = round(time.monotonic() - started, 1)
    if other >= plan.quiet_cores:
        print(f"  {label}: machine still busy ({other:.2f} cores elsewhere)", flush=True)
    return {"waited_s": waited, "other_cores": round(other, 2)}


def idle_suite(server: Any, pool: ClientPool, plan: Plan) -> dict[str, Any]:
    server.start()
    try:
        time.sleep(plan.settle_seconds)
        baseline = rss_kib(server.pids())
        result: dict[str, Any] = {
            "baseline_rss_kib": baseline,
            "baseline_rss_kib_by_process": {
                name: rss_kib([pid]) for name, pid in server.components().items()
            },
            "components": server.components(),
            "levels": [],
        }
        if plan.diagnose and server.name == "relay":
            result["objects_baseline"] = server.command("objects", top=80)
            server.command("trace_start")
        held = 0
        for level in plan.idle_levels:
            connect = pool.connect(
                server.port,
                STREAM_PATH,
                level - held,
                concurrency=plan.connect_concurrency,
                rate=plan.connect_rate,
                timeout=plan.connect_timeout,
            )
            held = connect["open"]
            time.sleep(plan.settle_seconds)
            rss = rss_kib(server.pids())
            components = {name: rss_kib([pid]) for name, pid in server.components().items()}
            entry = {
                "target": level,
                "open": held,
                "connect_seconds": round(connect["seconds"], 2),
                "connect_outcomes": connect["outcomes"],
                "rss_kib": rss,
                "rss_per_conn_kib": round((rss - baseline) / held, 2) if held else None,
                "rss_kib_by_process": components,
                "server": server.server_stats(),
                "client_nofile": connect["nofile"],
            }
            if server.name == "relay":  # after the RSS reading: a full pass stalls the loop
                entry["gc_full_pass"] = server.command("gc_collect")
            result["levels"].append(entry)
            print(f"  {server.name} idle {level}: open {held}, RSS {rss} KiB", flush=True)
        if plan.diagnose and server.name == "relay":
            result["objects_loaded"] = server.command("objects", top=80)
            result["tracemalloc"] = server.command("trace_diff", per=held, top=40)
        result["server_nofile"] = nofile_report(server.components())
        time.sleep(plan.idle_hold_seconds)
        result["open_after_hold"] = pool.progress()["open"]
        # One event to every connection: the ones that count as open really are.
        pool.phase(PHASE_IDLE_CHECK)
        server.publish(bench_events(PHASE_IDLE_CHECK, 0, 1))
        result["check_outcome"] = wait_for_deliveries(pool, held, plan.stall_seconds, 60)
        check = pool.report(1)
        result["check_delivered"] = check["total"]
        result["check_latency"] = summarize_latency(check["latencies_ns"])
        result["held"] = held
        pool.close_all()
        return result
    finally:
        pool.close_all()
        server.stop()


def throughput_suite(server: Any, pool: ClientPool, plan: Plan) -> dict[str, Any]:
    server.start()
    try:
        connect = pool.connect(
            server.port,
            STREAM_PATH,
            plan.clients,
            concurrency=plan.connect_concurrency,
            rate=plan.connect_rate,
            timeout=plan.connect_timeout,
        )
        clients = connect["open"]
        time.sleep(plan.settle_seconds)
        result: dict[str, Any] = {"clients": clients, "connect_outcomes": connect["outcomes"]}
        print(f"  {server.name}: {clients} clients connected", flush=True)
        if plan.profile_relay and server.name == "relay":
            server.command("profile_start")

        # (a) burst
        quiet = wait_for_quiet(server, pool, plan, f"{server.name} burst")
        stats_before = server.server_stats()
        pool.phase(PHASE_BURST)
        expected = plan.burst_events * clients
        meter = Meter(server, pool)
        first_send = time.time_ns()
        for start in range(0, plan.burst_events, plan.batch):
            count = min(plan.batch, plan.burst_events - start)
            server.publish(bench_events(PHASE_BURST, start, count))
        publish_ns = time.time_ns() - first_send
        outcome = wait_for_deliveries(pool, expected, plan.stall_seconds, 120)
        usage = meter.read()
        report = pool.report(plan.burst_events)
        seconds = max(1e-9, (report["last_ns"] - first_send) / 1e9)
        result["burst"] = {
            "events": plan.burst_events,
            "batch": plan.batch,
            "expected": expected,
            "delivered": report["total"],
            "clients_complete": report["complete"],
            "outcome": outcome,
            "out_of_order": report["out_of_order"],
            "seconds": round(seconds, 3),
            "publish_seconds": round(publish_ns / 1e9, 4),
            "deliveries_per_s": round(report["total"] / seconds),
            "latency": summarize_latency(report["latencies_ns"]),
            **usage,
            "server_cpu_us_per_delivery": _per(usage["server_cpu_s"], report["total"]),
            "quiet_before": quiet,
            "gc_pauses": gc_delta(stats_before, server.server_stats()),
        }
        print(f"  {server.name} burst: {result['burst']['deliveries_per_s']:,}/s", flush=True)
        time.sleep(1.0)

        # (b) steady
        quiet = wait_for_quiet(server, pool, plan, f"{server.name} steady")
        stats_before = server.server_stats()
        pool.phase(PHASE_STEADY)
        events = round(plan.steady_rate * plan.steady_seconds)
        expected = events * clients
        meter = Meter(server, pool)
        started = time.monotonic()
        late = 0
        for seq in range(events):
            delay = started + seq / plan.steady_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.01:
                late += 1
            server.publish(bench_events(PHASE_STEADY, seq, 1))
        send_seconds = time.monotonic() - started
        outcome = wait_for_deliveries(pool, expected, plan.stall_seconds, 60)
        usage = meter.read()
        report = pool.report(events)
        result["steady"] = {
            "rate": plan.steady_rate,
            "events": events,
            "send_seconds": round(send_seconds, 2),
            "sends_late_over_10ms": late,
            "expected": expected,
            "delivered": report["total"],
            "clients_complete": report["complete"],
            "outcome": outcome,
            "out_of_order": report["out_of_order"],
            "latency": summarize_latency(report["latencies_ns"]),
            **usage,
            "server_cpu_us_per_delivery": _per(usage["server_cpu_s"], report["total"]),
            "quiet_before": quiet,
            "gc_pauses": gc_delta(stats_before, server.server_stats()),
        }
        print(f"  {server.name} steady: p99 {result['steady']['latency']['p99_ms']} ms", flush=True)
        if plan.profile_relay and server.name == "relay":
            profile = server.command(
                "profile_stop", top=45, path=str(Path(server.workdir) / "relay.prof")
            )
            result["profile_top"] = (profile or {}).get("text", "")
        result["open_at_end"] = pool.progress()["open"]
        result["server_stats"] = server.server_stats()
        return result
    finally:
        pool.close_all()
        server.stop()


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The relay's garbage-collector passes between two stats readings (None for Pushpin)."""
    if "gc" not in before or "gc" not in after:
        return None
    delta = {}
    for generation, now in after["gc"].items():
        was = before["gc"].get(generation, {"count": 0, "total_s": 0.0})
        delta[generation] = {
            "count": now["count"] - was["count"],
            "total_ms": round((now["total_s"] - was["total_s"]) * 1000, 1),
            "max_ms_ever": round(now["max_s"] * 1000, 1),
        }
    return delta


def _per(cpu_s: float, deliveries: int) -> float | None:
    return round(cpu_s * 1e6 / deliveries, 2) if deliveries else None


def run_server(server: Any, pool: ClientPool, plan: Plan) -> dict[str, Any]:
    print(f"[{server.name}] idle connections {plan.idle_levels}", flush=True)
    started = time.monotonic()
    idle = idle_suite(server, pool, plan)
    print(f"[{server.name}] burst and steady, {plan.clients} clients", flush=True)
    throughput = throughput_suite(server, pool, plan)
    return {"idle": idle, **throughput, "suite_seconds": round(time.monotonic() - started, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, help="clients in burst and steady (1000)")
    parser.add_argument("--events", type=int, help="events in the burst (200)")
    parser.add_argument("--idle", help="idle levels, comma-separated (100,1000,10000)")
    parser.add_argument("--steady-seconds", type=float, help="length of the steady run (10)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (2)")
    parser.add_argument("--batch", type=int, default=10, help="events per publish in the burst")
    parser.add_argument(
        "--quick", action="store_true", help="100 clients, 50 events, idle 100/1000"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="longest wait per scenario for other jobs on the machine to calm down (60 s)",
    )
    parser.add_argument("--skip-pushpin", action="store_true", help="our relay only")
    parser.add_argument("--skip-relay", action="store_true", help="Pushpin only")
    parser.add_argument("--out", default="relay-bench-results.json", help="JSON results file")
    parser.add_argument("--profile-relay", action="store_true", help="cProfile burst+steady")
    parser.add_argument("--diagnose", action="store_true", help="live objects by type, relay idle")
    parser.add_argument(
        "--relay-extra-path",
        help="what-if: a directory put first on the relay's PYTHONPATH (e.g. with uvloop and "
        "httptools, which uvicorn then picks); the table says which stack ran",
    )
    parser.add_argument(
        "--relay-gc",
        default="",
        help="what-if: the relay process's garbage collector: 'off', 'freeze' (after start) "
        "or thresholds 'g0,g1,g2' (default: as production)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, config)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan(workers=max(1, min(args.workers, 8)), batch=max(1, args.batch))
    if args.quick:
        plan.clients, plan.burst_events, plan.idle_levels = 100, 50, [100, 1000]
        plan.steady_seconds = 2.5
        plan.settle_seconds, plan.idle_hold_seconds, plan.stall_seconds = 0.7, 1.0, 3.0
        plan.quiet_wait_seconds = 3.0
    if args.quiet_wait is not None:
        plan.quiet_wait_seconds = max(0.0, args.quiet_wait)
    if args.clients:
        plan.clients = args.clients
    if args.events:
        plan.burst_events = args.events
    if args.idle:
        plan.idle_levels = sorted({int(x) for x in args.idle.split(",") if x.strip()})
    if args.steady_seconds:
        plan.steady_seconds = args.steady_seconds
    plan.profile_relay, plan.diagnose = args.profile_relay, args.diagnose
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    nofile = raise_nofile()
    needed = max([plan.clients, *plan.idle_levels]) + 200
    workdir = Path(tempfile.mkdtemp(prefix="relaybench-"))
    max_seconds = 1800.0
    servers: list[Any] = []
    notes: list[str] = []
    if nofile[1] < needed:
        notes.append(
            f"open-file hard limit {nofile[1]} < {needed}: the largest idle level cannot be "
            "held by one server process (raise it with `ulimit -Hn` as root)"
        )
    if args.diagnose:
        notes.append("--diagnose: tracemalloc was on, so the relay's RSS figures are inflated")
    if args.profile_relay:
        notes.append("--profile-relay: cProfile was on, so the relay's CPU figures are inflated")
    if args.relay_gc or args.relay_extra_path:
        notes.append("what-if settings for the relay process: not the production configuration")
    if not args.skip_relay:
        servers.append(RelayServer(workdir, max_seconds, args.relay_extra_path, args.relay_gc))
    if not args.skip_pushpin:
        if PushpinServer.available():
            servers.append(PushpinServer(workdir, max_seconds, plan.message_rate, plan.message_hwm))
        else:
            print(INSTALL_HINT, file=sys.stderr)
            notes.append("pushpin not installed: relay side only")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": _cpus(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "nofile_soft_hard": list(nofile),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        },
        "plan": asdict(plan),
        "servers": {},
        "notes": notes,
    }
    print(f"work dir {workdir} (logs, Pushpin config)", flush=True)
    started = time.monotonic()
    pool = ClientPool(plan.workers, max_seconds)
    failed = False
    try:
        for server in servers:
            try:
                results["servers"][server.name] = run_server(server, pool, plan)
            except Exception as error:
                failed = True
                results["servers"][server.name] = {"error": f"{type(error).__name__}: {error}"}
                print(f"[{server.name}] failed: {error}", file=sys.stderr, flush=True)
    finally:
        pool.shutdown()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    table = render(results)
    results["table_markdown"] = table
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table)
    print(f"\nJSON: {out.resolve()}")
    if args.keep or failed:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
