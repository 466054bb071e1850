"""Shared by every process of the benchmark: limits, /proc readings, the benchmark's events."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
STREAM_PATH = "/api/events/stream"
CHANNEL = "events"
# Marks a benchmark event inside its payload: "bench:<phase>:<seq>:<send time_ns>:"
MARK = b"bench:"
WORKER_ID = "w-bench-0001"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit; the (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, so no benchmark process outlives the run."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_setup() -> None:
    """`preexec_fn` of every server process the benchmark starts."""
    raise_nofile()
    die_with_parent()


def watchdog(max_seconds: float) -> None:
    """End this process after `max_seconds` whatever it is doing (a bound on every child)."""

    def expire() -> None:
        time.sleep(max_seconds)
        os._exit(3)

    threading.Thread(target=expire, name="bench-watchdog", daemon=True).start()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return True
        time.sleep(0.05)
    return False


# --- /proc ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds used so far by each thread of `pid` (thread id → s)."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/task").iterdir():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by these processes."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    """Resident set size (VmRSS) of these processes, summed, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def descendants(root: int) -> list[int]:
    """`root` and every process below it (Pushpin's runner and the services it starts)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo and len(found) < 1000:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def nofile_limit(pid: int) -> tuple[int, int] | None:
    """The (soft, hard) open-file limit of a running process."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                parts = line.split()
                return int(parts[3]), int(parts[4])
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


# --- events ----------------------------------------------------------------------------


def bench_events(phase: int, first_seq: int, count: int, owners: Sequence[str] = ()) -> list[Any]:
    """`count` real `worker.status.updated` CloudEvents, each stamped with its send time.

    All are about `WORKER_ID` of alice, unless `owners` is given: then event `seq` is
    about the worker `worker_of(owner)` of `owners[seq % len(owners)]`.
    """
    from cmlfleet.events.catalog import WorkerStatusUpdated
    from cmlfleet.events.envelope import make_event

    events = []
    for seq in range(first_seq, first_seq + count):
        owner = owners[seq % len(owners)] if owners else "alice"
        worker_id = worker_of(owner) if owners else WORKER_ID
        sent = time.time_ns()
        payload = WorkerStatusUpdated(
            worker_id=worker_id,
            old_status="running",
            new_status="stopping",
            ec2_state="stopping",
            transition_started_at=None,
            reason=f"bench:{phase}:{seq}:{sent}:",
        )
        events.append(make_event(payload, worker_id=worker_id, version=seq + 1, owner=owner))
    return events


def worker_of(owner: str) -> str:
    """The one worker `owner` has in a benchmark with several owners."""
    return f"w-bench-{owner}"


def percentile(ordered: list[int] | list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return float(ordered[rank - 1])
