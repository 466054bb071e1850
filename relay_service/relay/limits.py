"""What one client may cost the relay: streams held, replays asked for, threads waited on.

The relay serves everyone from one event loop and a few threads, so each of these is
bounded per principal (and per client address), and a client over a limit is told so
cheaply (a 429, or `resync` instead of a replay) rather than served slowly at the
expense of the others. Everything here runs on the event loop's thread except the work
handed to a `BoundedExecutor`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cmlfleet.identity import Principal

T = TypeVar("T")


def principal_key(principal: Principal | None) -> str:
    """Whose stream or replay this is, for the limits: the `sub`, which is never reused."""
    return principal.subject if principal is not None else "anonymous"


class BusyError(Exception):
    """More work is waiting for this executor than it may queue."""


class BoundedExecutor:
    """A few threads of its own and a bounded queue in front of them.

    Ticket redemption, token checks and replay reads each get one, so a flood of one kind
    (say garbage tickets) waits behind itself and never behind, or in front of, the others.
    """

    def __init__(self, name: str, threads: int, max_waiting: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._room = threads + max_waiting
        self._taken = 0

    @property
    def in_use(self) -> int:
        return self._taken

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on one of the threads; `BusyError` at once if the queue is full."""
        if self._taken >= self._room:
            raise BusyError
        self._taken += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self._taken -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class StreamCounts:
    """Open streams per key (a principal, an address); `admit` refuses past the cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._open: Counter[str] = Counter()

    def admit(self, key: str) -> bool:
        if self._open[key] >= self._cap:
            return False
        self._open[key] += 1
        return True

    def release(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def __len__(self) -> int:
        return len(self._open)


class Allowance:
    """A token bucket per key: `per_minute` takes, refilled evenly over a minute.

    Rations replays per principal (a dashboard replays once per reconnect, a handful of
    times an hour; a client replaying in a loop gets `resync` and refetches the state over
    REST, which the API's own concurrency bounds) and connects per address (refused with a
    429 before any token is checked, so a reconnect loop costs the relay almost nothing).
    """

    def __init__(
        self,
        per_minute: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # `burst` takes at once (a minute's worth unless given), then `per_minute` a minute.
        self._capacity = float(per_minute if burst is None else burst)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)

    def take(self, key: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return allowed

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold nothing a fresh one would not."""
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= self._capacity:
                del self._buckets[key]


def client_address(scope_client: tuple[str, int] | None, forwarded_for: str, hops: int) -> str:
    """The address the client connected from, behind `hops` trusted proxies.

    Each proxy appends the address it saw to `X-Forwarded-For`, so with one load balancer
    in front the last entry is the client's and anything before it is the client's word.
    """
    if hops > 0 and forwarded_for:
        entries = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
        if len(entries) >= hops:
            return entries[-hops][:64]
    return scope_client[0] if scope_client else "unknown"
