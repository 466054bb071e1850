"""Issue 13: a hostile client reconnecting with old cursors while honest clients listen.

Does one `user` reconnecting in a loop with old `Last-Event-ID`s stall everyone else's
stream (security finding M1)? Measured side by side on one relay process:

  undisturbed  steady events (20/s for 15 s) to 1,000 honest streams: delivery latency
  hostile      the same, while the hostile client (its own process, a few connections,
               ONE `user` token that owns no workers, so it may see none of the events)
               reconnects as fast as it can with cursors 9,650 / 6,000 / 4,900 / 1,000
               events back, reads the first frame and resets the connection

alternating, repeated (3 times each). PASS when the hostile phases' p99 latency, all
their deliveries pooled, is within 2x of the undisturbed phases' and every event reached
every stream that may see it. Recorded too: what the relay answered the hostile client
(status, `connected` replay outcome, 429s), the relay's CPU seconds, its counters, and
how long `/api/events/live` took meanwhile.

The relay runs as production does for this case (benchmarks/relaybench/relay_server.py):
bearer RS256 tokens checked by `TokenVerifier` (keys given as a JWKS, as
`StaticSigningKeys`), every limit at its default. Honest streams belong to 100
principals, 10 each (under the per-principal cap of 20): 40 % admins (see every event),
30 % users owning the workers the events are about (each sees its own worker's), 30 %
users owning none. They come from 20 client addresses, 127.0.0.10 to 127.0.0.29 (Linux
routes all of 127.0.0.0/8 to `lo`, and each socket is bound to its address before it
connects), 50 each (under the per-address cap of 500; a principal's streams all from one
address, as a user's browser tabs are); the hostile client from 127.0.0.250, its own.
The relay must see them so (`scope["client"]`): the benchmark checks the addresses its
per-address stream counts hold before it measures.
Before any client connects, the replay ring (RELAY_RING_SIZE, 10,000) is filled with
10,000 events about the honest users' workers, so the old cursors are in it. The ring is
what is measured: there is no event log (DynamoDB) behind this relay.

Cursors (`--cursors`): `others` (default) are ids of those events, none of which the
hostile user may see (M1's evidence). With `own`, the hostile user owns one worker, one
event in every 100 (prefilled and live, never counted) is about it, and the cursors are
the ids of those nearest each depth: ids it did see, so a relay cannot dismiss them as
unknown to the client and must take the replay path.

With every limit at its default, the hostile address may connect 60 times at once
(RELAY_CONNECT_BURST_PER_ADDRESS) and then 10 a second (600 a minute); every other connect
is answered 429 from the raw request, before anything else is done for it, and held back
a second (RELAY_REFUSAL_DELAY_SECONDS; at most 32 at once per address), which holds the
hostile client's connection with it.

Usage: python -m benchmarks.hostile [--quick] [--clients N] [--seconds S] [--out FILE]
       [--relay-path DIR[:DIR]]   what-if: other relay code first on the relay's path
       [--profile-relay]          cProfile of the relay in each phase (Python 3.12's
                                  sees every thread: token checks too; its overhead is
                                  in that run's latencies)
Exit status: 0 PASS, 2 FAIL (measured, target missed), 1 the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.relay import Meter, summarize_latency, wait_for_deliveries, wait_for_quiet
from benchmarks.relay import Plan as RelayPlan
from benchmarks.relaybench.clients import ClientPool
from benchmarks.relaybench.common import (
    STREAM_PATH,
    bench_events,
    cpu_seconds,
    raise_nofile,
    thread_cpu_seconds,
)
from benchmarks.relaybench.hostile_client import HostileClient
from benchmarks.relaybench.hostile_report import render, verdict
from benchmarks.relaybench.live_probe import LiveProbe
from benchmarks.relaybench.servers import RelayServer
from devstack.issuer import DevelopmentIssuer

ISSUER = "https://issuer.relaybench.invalid/pool"  # never fetched: the keys are given
AUDIENCE = "cmlfleet-relaybench"
HOSTILE_USER = "mallory"
# Every limit at its default: the honest streams are 10 per principal (20 allowed) and 50
# per address (500 allowed), and connect at 25/s per address for 2 s, 50 of the 600 an
# address may make in a minute; only the hostile client meets a limit. (Set a variable
# here to try another value; the table lists what is set.)
RELAY_ENVIRONMENT: dict[str, str] = {}
HONEST_ADDRESSES = [f"127.0.0.{10 + n}" for n in range(20)]  # client i: the (i mod 20)th
HOSTILE_ADDRESS = "127.0.0.250"
PHASE_PREFILL, FIRST_PHASE = 9, 100  # events of phase 9 are never counted by a client
HOSTILE_EVERY = 100  # with --cursors own: one event in this many is the hostile user's


@dataclass
class Plan:
    clients: int = 1000
    streams_per_principal: int = 10
    rate: float = 20.0
    seconds: float = 15.0
    repetitions: int = 3
    hostile_connections: int = 8
    ring: int = 10_000  # RELAY_RING_SIZE's default; prefilled with this many events
    depths: list[int] = field(default_factory=lambda: [6000, 4900, 1000])
    workers: int = 2
    connect_rate: float = 500.0
    connect_concurrency: int = 32
    connect_timeout: float = 30.0
    head_start_seconds: float = 1.0  # the attack is in full swing before events start
    settle_seconds: float = 2.0
    stall_seconds: float = 10.0
    quiet_cores: float = 0.3
    quiet_wait_seconds: float = 10.0
    max_ratio: float = 2.0
    cursors: str = "others"  # or "own": ids of events the hostile user saw (module doc)
    profile_relay: bool = False

    @property
    def events(self) -> int:
        return round(self.rate * self.seconds)

    def cursor_depths(self) -> list[int]:
        """How far back the hostile cursors are: the deepest stays in the ring all phase."""
        deepest = self.ring - self.events - 50
        return sorted({deepest, *(d for d in self.depths if d < deepest)}, reverse=True)


@dataclass(frozen=True)
class Honest:
    """One honest principal: who, and which of the benchmark's events it may see."""

    username: str
    role: str
    sees: str  # "all" (admin), "own" (owns one of the events' workers), "none"


def honest_summary(plan: Plan) -> dict[str, int]:
    """How many principals of each kind hold the honest streams."""
    principals = honest_principals(plan)
    kinds = {kind: sum(1 for p in principals if p.sees == kind) for kind in ("all", "own", "none")}
    return {"principals": len(principals), **kinds}


def honest_principals(plan: Plan) -> list[Honest]:
    count = max(1, -(-plan.clients // plan.streams_per_principal))
    admins, owners = max(1, count * 4 // 10), max(1, count * 3 // 10)
    principals = [Honest(f"admin-{i:03d}", "admin", "all") for i in range(admins)]
    principals += [Honest(f"owner-{i:03d}", "user", "own") for i in range(owners)]
    principals += [
        Honest(f"bystander-{i:03d}", "user", "none") for i in range(count - admins - owners)
    ]
    return principals


class Bench:
    """The relay, the honest clients and the hostile one, and every event id published."""

    def __init__(self, plan: Plan, workdir: Path, relay_path: str | None, max_s: float):
        self.plan = plan
        self.principals = honest_principals(plan)
        self.owners = [p.username for p in self.principals if p.sees == "own"]
        issuer = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
        jwks = workdir / "jwks.json"
        jwks.write_text(json.dumps(issuer.jwks()))
        self.tokens = [f"Bearer {issuer.token(p.username, p.role)}" for p in self.principals]
        self.hostile_token = issuer.token(HOSTILE_USER, "user")
        self.server = RelayServer(
            workdir,
            max_s,
            relay_path,
            extra_args=["--jwks", str(jwks), "--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE],
            environment=RELAY_ENVIRONMENT,
            probe_authorization=f"Bearer {issuer.token('probe', 'admin')}",
        )
        self.pool = ClientPool(plan.workers, max_s)
        self.max_seconds = max_s
        self.hostile: HostileClient | None = None
        self.ids: list[str] = []
        self.hostile_sees: list[int] = []  # indexes in `ids` of the hostile user's events
        self.latencies: dict[str, array[int]] = {"undisturbed": array("q"), "hostile": array("q")}

    def start(self) -> dict[str, Any]:
        """Relay up, ring filled, honest clients connected, hostile process waiting."""
        self.server.start()
        for start in range(0, self.plan.ring, 10):  # as SQS hands them over: ≤ 10 at a time
            self.publish(bench_events(PHASE_PREFILL, start, 10, self.owners))
            self.publish_hostiles_own(start // 10, every=HOSTILE_EVERY // 10)
        ring = self.server.server_stats().get("ring_events")
        connect = self.connect_honest()
        sees = self.relay_sees()
        self.hostile = HostileClient(
            self.server.port, self.hostile_token, HOSTILE_ADDRESS, self.max_seconds
        )
        return {"ring_events": ring, "connect": connect, "relay_sees": sees}

    def relay_sees(self) -> dict[str, int]:
        """The honest streams per address as the relay counts them; they must be ours."""
        seen: dict[str, int] = self.server.server_stats()["limits"]["streams_by_address"]
        n = len(HONEST_ADDRESSES)
        due = dict(Counter(HONEST_ADDRESSES[k % n] for k in range(self.plan.clients)))
        print(f"  relay counts streams from {len(seen)} addresses: {seen}", flush=True)
        if seen != due:
            raise RuntimeError(f"the relay counts streams per address {seen}, not {due}")
        return seen

    def connect_honest(self) -> dict[str, Any]:
        """All honest streams, each principal's share; slower again if some were refused.

        (A relay may refuse connects while its token checks are busy, and a real client
        would come back: here all are made again, so every principal keeps its share.)
        """
        plan, refused = self.plan, []
        for attempt in range(3):
            connect = self.pool.connect(
                self.server.port,
                STREAM_PATH,
                plan.clients,
                concurrency=plan.connect_concurrency,
                rate=plan.connect_rate / 2**attempt,
                timeout=plan.connect_timeout,
                authorizations=self.tokens,
                source_addresses=HONEST_ADDRESSES,
            )
            print(f"  honest clients: {connect['open']} open {connect['outcomes']}", flush=True)
            if connect["open"] >= plan.clients:
                break
            refused.append(connect["outcomes"])
            self.pool.close_all()
            time.sleep(plan.settle_seconds)
        time.sleep(plan.settle_seconds)
        return connect | {"earlier_attempts": refused}

    def publish(self, events: list[Any], *, hostile_sees: bool = False) -> None:
        self.server.publish(events)
        if hostile_sees:
            self.hostile_sees += range(len(self.ids), len(self.ids) + len(events))
        self.ids += [event.id for event in events]

    def publish_hostiles_own(self, turn: int, every: int) -> None:
        """With `--cursors own`, every `every`th turn an event about the hostile user's worker."""
        if self.plan.cursors == "own" and turn % every == every - 1:
            self.publish(bench_events(PHASE_PREFILL, turn, 1, [HOSTILE_USER]), hostile_sees=True)

    def cursors(self) -> list[tuple[int, str]]:
        """(depth, id of an event that many events before the newest), deepest first.

        `others`: exactly that deep. `own`: the deepest of the hostile user's events that
        is not deeper.
        """
        newest, found = len(self.ids) - 1, []
        for depth in self.plan.cursor_depths():
            if self.plan.cursors == "own":
                at = next((i for i in self.hostile_sees if newest - i <= depth), None)
            else:
                at = newest - depth if depth <= newest else None
            if at is not None:
                found.append((newest - at, self.ids[at]))
        return found

    def expected(self) -> tuple[dict[int, tuple[int, int]], int]:
        """Per principal (label): (streams, events each gets); and all deliveries due."""
        plan, events = self.plan, self.plan.events
        due: dict[int, tuple[int, int]] = {}
        for label, principal in enumerate(self.principals):
            streams = plan.clients // len(self.principals)
            streams += 1 if label < plan.clients % len(self.principals) else 0
            if principal.sees == "all":
                each = events
            elif principal.sees == "own":
                j, n = self.owners.index(principal.username), len(self.owners)
                each = events // n + (1 if j < events % n else 0)
            else:
                each = 0
            due[label] = (streams, each)
        return due, sum(streams * each for streams, each in due.values())

    def shutdown(self) -> None:
        if self.hostile is not None:
            self.hostile.shutdown()
        self.pool.shutdown()
        self.server.stop()


def run_phase(bench: Bench, kind: str, repetition: int, phase: int) -> dict[str, Any]:
    """One steady run to the honest clients, with or without the hostile loop."""
    plan, server, pool, hostile = bench.plan, bench.server, bench.pool, bench.hostile
    assert hostile is not None
    reconnected = 0
    if pool.progress()["open"] < plan.clients:  # streams a hostile phase had cut off
        reconnected = plan.clients - pool.progress()["open"]
        pool.close_all()
        bench.connect_honest()
    quiet_plan = RelayPlan(quiet_cores=plan.quiet_cores, quiet_wait_seconds=plan.quiet_wait_seconds)
    quiet = wait_for_quiet(server, pool, quiet_plan, f"{kind} {repetition}")
    stats_before = server.server_stats()
    pool.phase(phase)
    due, expected = bench.expected()
    meter, hostile_cpu = Meter(server, pool), cpu_seconds([hostile.pid or 0])
    threads_before = thread_cpu_seconds(server.pids()[0])
    if plan.profile_relay:
        server.command("profile_start")
    cursors = bench.cursors() if kind == "hostile" else []
    attack: dict[str, Any] | None = None
    with LiveProbe(server.port) as live:
        if cursors:
            hostile.attack(cursors, plan.hostile_connections)
        time.sleep(plan.head_start_seconds)
        late = send_steady(bench, phase)
        if cursors:
            attack = hostile.stop()
            attack["cpu_s"] = round(cpu_seconds([hostile.pid or 0]) - hostile_cpu, 2)
        outcome = wait_for_deliveries(pool, expected, plan.stall_seconds, 90)
    usage = meter.read()
    threads = relay_threads(threads_before, thread_cpu_seconds(server.pids()[0]), server.pids()[0])
    profile = (
        server.command(
            "profile_stop", top=40, path=str(server.workdir / f"relay-{kind}-{repetition}.prof")
        )
        if plan.profile_relay
        else None
    )
    stats_after = server.server_stats()
    report = pool.report(0)
    bench.latencies[kind].extend(report["latencies_ns"])
    short = {
        bench.principals[label].username: got
        for label, (streams, each) in due.items()
        if (got := report["by_label"].get(label, [0, 0, 0]))[0] < streams or got[1] < each
    }
    result = {
        "kind": kind,
        "repetition": repetition,
        "events": plan.events,
        "expected": expected,
        "delivered": report["total"],
        "all_delivered": report["total"] == expected and not short,
        "outcome": outcome,
        "principals_short": short,
        "out_of_order": report["out_of_order"],
        "latency": summarize_latency(report["latencies_ns"]),
        "sends_late_over_10ms": late,
        "honest_open_at_end": pool.progress()["open"],
        "honest_reconnected_before": reconnected,
        "cursors": [depth for depth, _ in cursors],
        "hostile": attack,
        "live_probe": live.summary(),
        "relay_counters": counter_delta(stats_before, stats_after),
        # The relay keeps a connect allowance for the address it saw the hostile client at.
        "relay_rations_hostile_address": HOSTILE_ADDRESS
        in stats_after["limits"]["connect_addresses"],
        "quiet_before": quiet,
        "relay_threads_cpu_s": threads,
        **usage,
    }
    if profile is not None:
        result["profile_top"] = profile.get("text", "")
    p99 = result["latency"]["p99_ms"]
    print(f"  {kind} {repetition}: p99 {p99} ms, {report['total']:,}/{expected:,}", flush=True)
    return result


def send_steady(bench: Bench, phase: int) -> int:
    """`rate` events a second for `seconds`, about the owners' workers in turn; sends late."""
    plan, late = bench.plan, 0
    started = time.monotonic()
    for seq in range(plan.events):
        delay = started + seq / plan.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.01:
            late += 1
        bench.publish(bench_events(phase, seq, 1, bench.owners))
        bench.publish_hostiles_own(seq, every=HOSTILE_EVERY)
    return late


def relay_threads(before: dict[int, float], after: dict[int, float], pid: int) -> dict[str, float]:
    """The relay's CPU over a phase: its main thread (uvicorn's event loop), and the rest
    (token checks and replay reads on their executors, the benchmark's control bus)."""
    used = {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}
    loop = used.pop(pid, 0.0)
    return {"event_loop": round(loop, 2), "other_threads": round(sum(used.values()), 2)}


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    was, now = before.get("stats", {}), after.get("stats", {})
    return {k: v - was.get(k, 0) for k, v in sorted(now.items()) if v != was.get(k, 0)}


def run(bench: Bench, results: dict[str, Any]) -> None:
    plan = bench.plan
    print(f"[relay] ring of {plan.ring:,}, {plan.clients} honest clients", flush=True)
    results["setup"] = bench.start()
    if (results["setup"]["ring_events"] or 0) < plan.ring:
        print(
            f"  the relay's ring holds {results['setup']['ring_events']} events, fewer "
            f"than {plan.ring:,}: the deepest cursors are not in it",
            flush=True,
        )
    phase = FIRST_PHASE
    for repetition in range(1, plan.repetitions + 1):
        for kind in ("undisturbed", "hostile"):
            results["phases"].append(run_phase(bench, kind, repetition, phase))
            phase += 1
    results["pooled"] = {kind: summarize_latency(lat) for kind, lat in bench.latencies.items()}
    results["server_stats"] = bench.server.server_stats()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, help="honest streams (1000)")
    parser.add_argument("--seconds", type=float, help="length of each phase's events (15)")
    parser.add_argument("--repetitions", type=int, help="undisturbed + hostile pairs (3)")
    parser.add_argument("--connections", type=int, help="hostile connections (8)")
    parser.add_argument("--quick", action="store_true", help="200 clients, 5 s, 1 repetition")
    parser.add_argument(
        "--cursors",
        choices=["others", "own"],
        default="others",
        help="the hostile cursors: ids of others' events (default) or of its own (doc)",
    )
    parser.add_argument("--out", default="hostile-bench-results.json", help="JSON results file")
    parser.add_argument(
        "--relay-path",
        help="what-if: directories put first on the relay's PYTHONPATH, e.g. another "
        "commit's relay_service (`git archive HEAD relay_service | tar -x -C /tmp/head`, "
        "then /tmp/head/relay_service); the table says so",
    )
    parser.add_argument(
        "--profile-relay",
        action="store_true",
        help="cProfile of the relay in each phase, all its threads (top entries in the "
        "JSON, .prof files in the work dir, which is kept)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (relay log)")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan()
    if args.quick:
        plan.clients, plan.seconds, plan.repetitions = 200, 5.0, 1
        plan.settle_seconds, plan.stall_seconds, plan.quiet_wait_seconds = 1.0, 5.0, 3.0
    plan.clients = args.clients or plan.clients
    plan.seconds = args.seconds or plan.seconds
    plan.repetitions = args.repetitions or plan.repetitions
    plan.hostile_connections = args.connections or plan.hostile_connections
    plan.cursors = args.cursors
    plan.profile_relay = args.profile_relay
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    nofile = raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="hostilebench-"))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "nofile_soft_hard": list(nofile)},
        "plan": asdict(plan) | {"cursor_depths": plan.cursor_depths()},
        "honest": honest_summary(plan),
        "relay": {
            "code": args.relay_path or "this checkout",
            "authentication": "bearer RS256 (TokenVerifier, StaticSigningKeys)",
            "environment": RELAY_ENVIRONMENT,
            "addresses": {
                "honest": f"{HONEST_ADDRESSES[0]} to {HONEST_ADDRESSES[-1]}",
                "honest_count": min(plan.clients, len(HONEST_ADDRESSES)),
                "hostile": HOSTILE_ADDRESS,
            },
        },
        "phases": [],
    }
    print(f"work dir {workdir} (relay log)", flush=True)
    started = time.monotonic()
    bench = Bench(plan, workdir, args.relay_path, max_s=900.0)
    failed = False
    try:
        run(bench, results)
    except Exception as error:
        failed = True
        results["error"] = f"{type(error).__name__}: {error}"
        print(f"failed: {error}", file=sys.stderr, flush=True)
    finally:
        bench.shutdown()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["verdict"] = verdict(results)
    results["table_markdown"] = table = render(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table)
    print(f"\nJSON: {out.resolve()}")
    if args.keep or failed or plan.profile_relay:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        return 1
    return 0 if results["verdict"]["pass"] else 2  # measured, and the target was missed


if __name__ == "__main__":
    sys.exit(main())
