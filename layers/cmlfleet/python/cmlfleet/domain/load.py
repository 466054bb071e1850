"""A worker's load and labs: when a new sample or lab list is worth saving and announcing.

The collectors run every minute (metrics) and every five (labs) over the whole fleet.
Writing and broadcasting every sample would flood the bus with noise, so a sample is kept
only when a value moved past a threshold, a count changed, or a keep-alive interval
passed (so the dashboard knows the numbers are still fresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cmlfleet.domain.worker import Change, Worker
from cmlfleet.events.catalog import LabSummary, WorkerLabsUpdated, WorkerMetricsUpdated

PERCENT_FIELDS = ("cpu_utilization", "memory_utilization", "storage_utilization")
COUNT_FIELDS = ("labs_count", "running_nodes", "total_nodes")


@dataclass(frozen=True)
class MetricsSample:
    """What one collection found for one worker (None: that source had nothing)."""

    collected_at: datetime
    cpu_utilization: float | None = None
    memory_utilization: float | None = None
    storage_utilization: float | None = None
    labs_count: int | None = None
    running_nodes: int | None = None
    total_nodes: int | None = None


@dataclass(frozen=True)
class MetricsPolicy:
    threshold_points: float = 5.0  # percentage points a value must move to count
    keepalive: timedelta = timedelta(minutes=10)


def apply_metrics(worker: Worker, sample: MetricsSample, policy: MetricsPolicy) -> Change | None:
    """The change recording `sample`, or `None` when it is not worth a write and an event."""
    values = {name: getattr(sample, name) for name in (*PERCENT_FIELDS, *COUNT_FIELDS)}
    values = {name: value for name, value in values.items() if value is not None}
    if not values:
        return None
    last = worker.metrics_collected_at
    stale = last is None or sample.collected_at - last >= policy.keepalive
    if not stale and not _moved(worker, values, policy.threshold_points):
        return None
    if last is not None and sample.collected_at <= last:
        return None  # an older run finishing late must not overwrite a newer sample
    updated = worker.model_copy(
        update=values
        | {
            "metrics_collected_at": sample.collected_at,
            "updated_at": sample.collected_at,
            "version": worker.version + 1,
        }
    )
    event = WorkerMetricsUpdated(
        worker_id=worker.worker_id,
        collected_at=sample.collected_at,
        **{name: getattr(updated, name) for name in (*PERCENT_FIELDS, *COUNT_FIELDS)},
    )
    return Change(updated, [event])


def _moved(worker: Worker, values: dict[str, float | int], threshold: float) -> bool:
    for name, value in values.items():
        previous = getattr(worker, name)
        if previous is None:
            return True
        if name in COUNT_FIELDS and value != previous:
            return True
        if name in PERCENT_FIELDS and abs(float(value) - float(previous)) >= threshold:
            return True
    return False


@dataclass(frozen=True)
class LabsDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_labs(old: list[LabSummary], new: list[LabSummary]) -> LabsDiff:
    """Lab ids added, removed, and changed in anything the dashboard shows."""
    before = {lab.lab_id: lab for lab in old}
    after = {lab.lab_id: lab for lab in new}
    return LabsDiff(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(i for i in after.keys() & before.keys() if after[i] != before[i]),
    )


def apply_labs(
    worker: Worker,
    labs: list[LabSummary],
    *,
    now: datetime,
    trigger: Literal["schedule", "manual", "import"],
) -> Change | None:
    """The change recording the worker's current labs, or `None` when nothing changed."""
    labs = sorted(labs, key=lambda lab: lab.lab_id)
    difference = diff_labs(worker.labs, labs)
    if difference.empty and worker.labs_synced_at is not None:
        return None
    updated = worker.model_copy(
        update={
            "labs": labs,
            "labs_count": len(labs),
            "labs_synced_at": now,
            "updated_at": now,
            "version": worker.version + 1,
        }
    )
    event = WorkerLabsUpdated(
        worker_id=worker.worker_id,
        labs=labs,
        added=difference.added,
        removed=difference.removed,
        changed=difference.changed,
        trigger=trigger,
    )
    return Change(updated, [event])
