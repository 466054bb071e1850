"""Changes operators ask for: start, stop and terminate a worker.

Each returns the change to save once EC2 accepted the request, or raises
`IllegalTransitionError` when the worker's status does not allow it. The statuses that
follow (running, stopped, terminated) come from EC2's own reports.
"""

from __future__ import annotations

from datetime import datetime

from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Change, Worker
from cmlfleet.events.catalog import WorkerStatusUpdated, WorkerTerminated

STARTABLE = frozenset({WorkerStatus.STOPPED})
STOPPABLE = frozenset({WorkerStatus.RUNNING, WorkerStatus.PENDING})
TERMINABLE = frozenset(
    {
        WorkerStatus.PROVISIONING,
        WorkerStatus.PENDING,
        WorkerStatus.RUNNING,
        WorkerStatus.STOPPING,
        WorkerStatus.STOPPED,
        WorkerStatus.FAILED,
        WorkerStatus.UNKNOWN,
    }
)


class IllegalTransitionError(Exception):
    """The worker's status does not allow the request (e.g. starting a terminated worker)."""

    def __init__(self, worker: Worker, action: str) -> None:
        super().__init__(f"cannot {action} worker {worker.worker_id}: it is {worker.status}")
        self.worker, self.action = worker, action


def request_start(worker: Worker, *, by: str, now: datetime) -> Change:
    return _move(worker, WorkerStatus.PENDING, STARTABLE, "start", by=by, now=now)


def request_stop(worker: Worker, *, by: str, now: datetime) -> Change:
    return _move(worker, WorkerStatus.STOPPING, STOPPABLE, "stop", by=by, now=now)


def request_termination(worker: Worker, *, by: str, now: datetime) -> Change:
    """Terminating is final for the operator: `worker.terminated` is emitted now."""
    change = _move(worker, WorkerStatus.TERMINATING, TERMINABLE, "terminate", by=by, now=now)
    terminated = change.worker.model_copy(
        # A second event, so a second version: every event of a worker has its own.
        update={"terminated_at": now, "terminated_by": by, "version": change.worker.version + 1}
    )
    event = WorkerTerminated(worker_id=worker.worker_id, terminated_at=now, terminated_by=by)
    return Change(terminated, [*change.events, event])


def _move(
    worker: Worker,
    status: WorkerStatus,
    allowed_from: frozenset[WorkerStatus],
    action: str,
    *,
    by: str,
    now: datetime,
) -> Change:
    if worker.status not in allowed_from or worker.instance_id is None:
        raise IllegalTransitionError(worker, action)
    moved = worker.model_copy(
        update={
            "status": status,
            "transition_started_at": now,
            "updated_at": now,
            "version": worker.version + 1,
        }
    )
    event = WorkerStatusUpdated(
        worker_id=worker.worker_id,
        old_status=worker.status,
        new_status=status,
        ec2_state=worker.ec2_state,
        transition_started_at=now,
        reason=f"{action} requested by {by}",
    )
    return Change(moved, [event])
