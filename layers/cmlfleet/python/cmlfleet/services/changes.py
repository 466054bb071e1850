"""Saving a change to a worker with its events, re-deciding it after a concurrent write.

Every writer (EC2 reports, commands, collectors) does the same: decide the change on the
worker as read, save worker and events in one transaction on the read `version`, and if
another writer got there first, read again and decide again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cmlfleet.adapters.repository import ConcurrentModificationError, WorkerRepository
from cmlfleet.domain.worker import Change, Worker
from cmlfleet.events.envelope import envelopes

MAX_SAVE_ATTEMPTS = 4


@dataclass(frozen=True)
class Saved:
    worker: Worker | None  # the worker as last read; None if it disappeared meanwhile
    change: Change | None  # what was saved; None when there was nothing to do


def save_change(
    repository: WorkerRepository,
    worker: Worker,
    decide: Callable[[Worker], Change | None],
    *,
    source: str,
    attempts: int = MAX_SAVE_ATTEMPTS,
) -> Saved:
    """Decide and save; raises `ConcurrentModificationError` after `attempts` lost races."""
    for _ in range(attempts):
        change = decide(worker)
        if change is None:
            return Saved(worker, None)
        events = envelopes(
            change.events,
            worker_id=worker.worker_id,
            owner=worker.owner,
            version=change.worker.version,
            source=source,
        )
        try:
            repository.save(change.worker, events, expected_version=worker.version)
        except ConcurrentModificationError:
            fresh = repository.get(worker.worker_id)
            if fresh is None:
                return Saved(None, None)
            worker = fresh
            continue
        return Saved(change.worker, change)
    raise ConcurrentModificationError(f"worker {worker.worker_id}: too many concurrent writers")
