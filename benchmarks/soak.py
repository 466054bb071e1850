"""Soak of the relay: SSE clients connect and drop at a steady churn while events flow.

A `python -m relay` process (as on Fargate) reads its queue on a moto server. One thread
publishes `worker.status.updated` events to the topic at a steady rate (a few workers,
each one's version rising by one, so a gap shows). A pool of client threads each connect,
read for a random while, make sure they hold every event they were entitled to, drop (a
clean close or a TCP reset) and connect again: fresh, or resuming with `Last-Event-ID`
(`tests/soak/churn.py`, which says what a client is entitled to). The relay's RSS and open
file descriptors are sampled every second.

Usage: python -m benchmarks.soak [--seconds 300] [--clients 100] [--rate 15] [--out FILE]
prints the figures as JSON and a Markdown row for RELIABILITY.md; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from devstack.relayproc import RelayProcess
from devstack.stack import LOCAL_ENVIRONMENT, free_port
from tests.soak.churn import READ_TIMEOUT, ChurnClient, Ledger, Publisher, SoakPlan

LEAK_PER_CONNECTION_KIB = 1.0  # see memory_bound
HEAP_STEP_KIB = 512.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    at: float  # seconds since the soak began
    rss_kib: int
    fds: int
    connections: int  # how many the clients had made and dropped by then
    cpu_seconds: float  # the relay's, user and system


class ProcessSampler:
    """Reads a process's RSS and open file descriptors from /proc every `interval` s."""

    def __init__(self, pid: int, ledger: Ledger, interval: float = 1.0) -> None:
        self._pid, self._ledger, self._interval = pid, ledger, interval
        self.began = time.monotonic()
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def read(self) -> Sample:
        status = Path(f"/proc/{self._pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
        fds = len(os.listdir(f"/proc/{self._pid}/fd"))
        # /proc/<pid>/stat: utime and stime are fields 14 and 15, after the parenthesised name.
        ticks = Path(f"/proc/{self._pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
        cpu = sum(int(t) for t in ticks) / CLOCK_TICKS
        at = round(time.monotonic() - self.began, 2)
        return Sample(at, rss, fds, self._ledger.counts["connections"], cpu)

    def start(self) -> None:
        self.began = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def warm_at(self, connections: int) -> float | None:
        """When the clients had made `connections` connections, if they had."""
        return next((s.at for s in self.samples if s.connections >= connections), None)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append(self.read())


def slope_per_minute(samples: list[Sample]) -> float:
    """The least-squares slope of RSS over time, in KiB per minute."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(s.at for s in samples) / len(samples)
    mean_r = sum(s.rss_kib for s in samples) / len(samples)
    covariance = sum((s.at - mean_t) * (s.rss_kib - mean_r) for s in samples)
    variance = sum((s.at - mean_t) ** 2 for s in samples)
    return 60 * covariance / variance if variance else 0.0


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def relay_health(relay: RelayProcess) -> dict[str, Any]:
    """The relay's client count and counters, from its metrics port (the public health
    check says only ok or not)."""
    with urllib.request.urlopen(relay.metrics_url, timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    stats: dict[str, int] = {}
    clients = 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("cmlfleet_relay_") and name.endswith("_total"):
            stats[name.removeprefix("cmlfleet_relay_").removesuffix("_total")] = int(float(value))
        elif name == "cmlfleet_relay_clients":
            clients = int(float(value))
    return {"clients": clients, "stats": stats}


def run_soak(plan: SoakPlan) -> dict[str, Any]:
    """Start moto and a relay process, churn clients against it, and return the figures."""
    moto_port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log, per request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    relay: RelayProcess | None = None
    try:
        endpoint = f"http://127.0.0.1:{moto_port}"
        sns = boto3.session.Session(
            aws_access_key_id=LOCAL_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        ).client("sns", endpoint_url=endpoint)
        topic_arn = sns.create_topic(Name="soak-events")["TopicArn"]
        environment = LOCAL_ENVIRONMENT | {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "TOPIC_ARN": topic_arn,
            "RELAY_POLL_WAIT_SECONDS": "1",
            "RELAY_ANONYMOUS_ROLE": "admin",  # transport under churn, not identity
            # Every client is the one anonymous principal here: lift its per-user limits.
            "RELAY_STREAMS_PER_PRINCIPAL": "100000",
            "RELAY_REPLAYS_PER_MINUTE": "10000",
            "RELAY_STREAMS_PER_ADDRESS": "100000",
            "RELAY_CONNECTS_PER_ADDRESS_PER_MINUTE": "1000000",
            "RELAY_RING_SIZE": str(plan.ring_size),
            "HEARTBEAT_SECONDS": str(plan.heartbeat_seconds),
            "RELAY_LOG_LEVEL": "warning",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        relay = RelayProcess(environment, port=free_port()).start()
        return _churn(plan, relay, sns, topic_arn)
    finally:
        if relay is not None:
            relay.stop(timeout=15)
        moto.stop()


def _churn(plan: SoakPlan, relay: RelayProcess, sns: Any, topic_arn: str) -> dict[str, Any]:
    assert relay.process is not None
    ledger = Ledger()
    publisher = Publisher(sns, topic_arn, plan, ledger)
    sampler = ProcessSampler(relay.process.pid, ledger)
    publisher.start()
    before = _baseline(relay, sampler, ledger)
    clients = [ChurnClient(i, relay.port, publisher, ledger, plan) for i in range(plan.clients)]
    sampler.start()
    for client in clients:
        client.thread.start()
    ran_for = _run_until_measured(plan, sampler)
    for client in clients:
        client.stopping.set()
    for client in clients:
        client.thread.join(plan.catch_up_seconds + READ_TIMEOUT + 5)
    if stuck := sum(client.thread.is_alive() for client in clients):
        ledger.fail(f"{stuck} client threads did not finish")
    publisher.stop()
    # Closed sockets take a moment to leave, the health check's own too: wait for the
    # baseline (the margin is for a connection to moto the relay's AWS client may open).
    wait_until(
        lambda: relay_health(relay)["clients"] == 0 and sampler.read().fds <= before.fds,
        timeout=15,
    )
    after = sampler.read()
    if after.fds > before.fds + plan.fd_margin:
        ledger.fail(f"the relay kept {after.fds - before.fds} descriptors after its clients left")
    sampler.stop()
    health = relay_health(relay)
    if health["clients"]:
        ledger.fail(f"the relay still holds {health['clients']} subscriptions")
    figures = _report(plan, ledger, publisher, sampler, before, after, ran_for)
    return figures | {"relay_after": {"clients": health["clients"], "stats": health["stats"]}}


def _baseline(relay: RelayProcess, sampler: ProcessSampler, ledger: Ledger) -> Sample:
    """The relay before any client: events flowing through it (its connections to moto
    are open) and its descriptor count steady."""
    if not wait_until(lambda: relay_health(relay)["stats"].get("published", 0) > 0, 30):
        ledger.fail("no event reached the relay within 30 s")
    readings: list[int] = []

    def steady() -> bool:
        readings.append(sampler.read().fds)
        return len(readings) >= 3 and len(set(readings[-3:])) == 1

    wait_until(steady, timeout=10, interval=0.3)
    return sampler.read()


def _run_until_measured(plan: SoakPlan, sampler: ProcessSampler) -> float:
    """Churn for `plan.seconds`, or longer (a minute at most) if the warm-up ended too late
    to leave a window for the slope: a busy machine makes fewer connections a second."""
    while True:
        elapsed = time.monotonic() - sampler.began
        warm = sampler.warm_at(plan.warmup_connections)
        measured = warm is not None and elapsed - warm >= plan.min_window_seconds
        if elapsed >= plan.seconds + 60 or (elapsed >= plan.seconds and measured):
            return elapsed
        time.sleep(0.5)


def _report(
    plan: SoakPlan,
    ledger: Ledger,
    publisher: Publisher,
    sampler: ProcessSampler,
    before: Sample,
    after: Sample,
    ran_for: float,
) -> dict[str, Any]:
    samples, warm = sampler.samples, sampler.warm_at(plan.warmup_connections)
    window = [s for s in samples if warm is not None and warm <= s.at <= ran_for]
    churn_per_min = ledger.counts["connections"] / ran_for * 60
    slope = slope_per_minute(window)
    window_minutes = (window[-1].at - window[0].at) / 60 if len(window) > 1 else 0.0
    bound = memory_bound(churn_per_min, window_minutes)
    return {
        "plan": asdict(plan),
        "seconds": round(ran_for, 1),
        **ledger.counts,
        "churn_per_min": round(churn_per_min),
        "events_published": publisher.finished,
        "failures": ledger.failures,
        "failure_examples": ledger.examples,
        "rss_kib": {
            "before_clients": before.rss_kib,
            "after_warmup": window[0].rss_kib if window else None,
            "end": window[-1].rss_kib if window else None,
            "peak": max((s.rss_kib for s in samples), default=before.rss_kib),
            "after_clients": after.rss_kib,
        },
        "rss_slope_kib_per_min": round(slope, 1),
        "rss_slope_bound_kib_per_min": round(bound, 1),
        "slope_window_s": [window[0].at, window[-1].at] if window else None,
        "warmup_connections_at_s": warm,
        "fds": {
            "before_clients": before.fds,
            "peak": max((s.fds for s in samples), default=before.fds),
            "after_clients": after.fds,
        },
        "relay_cpu_share": round((after.cpu_seconds - before.cpu_seconds) / ran_for, 2),
        "samples": [[s.at, s.rss_kib, s.fds, s.connections] for s in samples],
    }


def memory_bound(churn_per_min: float, window_minutes: float) -> float:
    """The RSS slope (KiB/min) above which the relay is taken to leak per connection.

    1 KiB per churned connection: leaking anything a connection owns costs more. Leaking
    each closed Subscription (injected into a relay for a trial run) grew RSS by ~3.6 KiB
    per connection; the whole connection is ~30 KiB (BENCHMARKS.md); a Subscription left
    in the hub keeps queueing frames. A healthy relay creeps by ~0.2 KiB per connection here
    (cyclic garbage its raised GC thresholds collect late, allocator fragmentation), so
    1 KiB leaves room for a noisy machine. One leaked ~0.4 KiB frame per connection hides
    in that creep (tried: not caught); the descriptor and subscription checks catch the
    leaks that would carry one. Plus one 512 KiB step of the heap spread over the window,
    which a short window would otherwise read as a steep slope.
    """
    if window_minutes <= 0:
        return 0.0
    return churn_per_min * LEAK_PER_CONNECTION_KIB + HEAP_STEP_KIB / window_minutes


def markdown_row(figures: dict[str, Any]) -> str:
    """One row of RELIABILITY.md's table: fault, injected, observed, events lost."""
    plan, rss, fds = figures["plan"], figures["rss_kib"], figures["fds"]
    injected = (
        f"{plan['clients']} clients each reading {plan['min_life']:g} to {plan['max_life']:g} s, "
        f"then dropping ({plan['reset_share']:.0%} by TCP reset) and reconnecting "
        f"({plan['resume_share']:.0%} with Last-Event-ID), {plan['rate']:g} events/s"
    )
    observed = (
        f"{figures['connections']:,} connections ({figures['replayed']:,} events replayed to "
        f"resuming ones), {figures['events_published']:,} events, "
        f"{figures['deliveries_checked']:,} deliveries checked, {figures['failures']} failures; "
        f"RSS {_kib(rss['after_warmup'])} → {_kib(rss['end'])} KiB after warm-up, slope "
        f"{figures['rss_slope_kib_per_min']:+,.0f} KiB/min "
        f"(bound {figures['rss_slope_bound_kib_per_min']:,.0f}); fds {fds['before_clients']} "
        f"→ peak {fds['peak']} → {fds['after_clients']}"
    )
    return f"| Soak, {figures['seconds']:.0f} s | {injected} | {observed} | {figures['missing']} |"


def _kib(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakPlan()
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="of churn")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, help="also write the JSON (with samples) here")
    args = parser.parse_args(argv)
    plan = SoakPlan(seconds=args.seconds, clients=args.clients, rate=args.rate, seed=args.seed)
    figures = run_soak(plan)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=2))
    print(markdown_row(figures))
    flat = figures["rss_slope_kib_per_min"] < figures["rss_slope_bound_kib_per_min"]
    return 0 if figures["failures"] == 0 and flat else 1


if __name__ == "__main__":
    sys.exit(main())
