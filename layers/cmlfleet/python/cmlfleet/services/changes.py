"""Saving a change to a worker with its events, re-deciding it after a concurrent write.

Every writer (EC2 reports, commands, collectors) does the same: decide the change on the
worker as read, save worker and events in one transaction on the read `version`, and if
another writer got there first, read again and decide again. When DynamoDB cancels the
transaction for a conflict with one still in flight, or throttles it, the same happens
after a short, jittered pause (botocore's retries never retry a cancelled transaction).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from cmlfleet.adapters.repository import (
    ConcurrentModificationError,
    TransientWriteError,
    WorkerRepository,
)
from cmlfleet.domain.worker import Change, Worker
from cmlfleet.events.envelope import envelopes

MAX_SAVE_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0


@dataclass(frozen=True)
class Saved:
    worker: Worker | None  # the worker as last read; None if it disappeared meanwhile
    change: Change | None  # what was saved; None when there was nothing to do


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` after a transient failure ("full
    jitter": spread at random up to a doubling cap, so colliding writers drift apart)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret


def save_change(
    repository: WorkerRepository,
    worker: Worker,
    decide: Callable[[Worker], Change | None],
    *,
    source: str,
    attempts: int = MAX_SAVE_ATTEMPTS,
    pause: Callable[[float], None] = time.sleep,
) -> Saved:
    """Decide and save; raises `ConcurrentModificationError` after `attempts` lost races
    (a `TransientWriteError` if the last one was a cancellation or throttling)."""
    for attempt in range(attempts):
        change = decide(worker)
        if change is None:
            return Saved(worker, None)
        events = envelopes(
            change.events,
            worker_id=worker.worker_id,
            owner=worker.owner,
            owner_sub=worker.owner_sub,
            version=change.worker.version,
            source=source,
        )
        try:
            repository.save(change.worker, events, expected_version=worker.version)
        except ConcurrentModificationError as error:
            if attempt + 1 == attempts:
                raise
            if isinstance(error, TransientWriteError):
                pause(backoff(attempt))
            fresh = repository.get(worker.worker_id)
            if fresh is None:
                return Saved(None, None)
            worker = fresh
            continue
        return Saved(change.worker, change)
    raise ConcurrentModificationError(f"worker {worker.worker_id}: too many concurrent writers")
