"""Worker statuses and the single table that maps EC2 instance states onto them.

Every path (EC2 events, commands, imports, periodic sync) uses `status_for_ec2_state`,
so there is one mapping, not three as in the reference implementation.
"""

from __future__ import annotations

from enum import StrEnum


class Ec2State(StrEnum):
    """The instance states EC2 reports (`detail.state` of a state-change notification)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"


class WorkerStatus(StrEnum):
    """A worker's lifecycle status as the dashboard shows it."""

    PROVISIONING = "provisioning"  # domain only: asked for, EC2 has not reported yet
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"  # domain only: provisioning or a command failed for good
    UNKNOWN = "unknown"  # domain only: EC2 reported nothing we recognise


EC2_STATE_TO_STATUS: dict[Ec2State, WorkerStatus] = {
    Ec2State.PENDING: WorkerStatus.PENDING,
    Ec2State.RUNNING: WorkerStatus.RUNNING,
    Ec2State.STOPPING: WorkerStatus.STOPPING,
    Ec2State.STOPPED: WorkerStatus.STOPPED,
    Ec2State.SHUTTING_DOWN: WorkerStatus.TERMINATING,
    Ec2State.TERMINATED: WorkerStatus.TERMINATED,
}

TRANSITIONAL_STATUSES = frozenset(
    {
        WorkerStatus.PROVISIONING,
        WorkerStatus.PENDING,
        WorkerStatus.STOPPING,
        WorkerStatus.TERMINATING,
    }
)

FINAL_STATUSES = frozenset({WorkerStatus.TERMINATED})

# EC2's own lifecycle: which state may directly follow which. Used to order two reports
# that carry the same timestamp (EventBridge times have one-second resolution).
EC2_SUCCESSORS: dict[Ec2State, frozenset[Ec2State]] = {
    Ec2State.PENDING: frozenset({Ec2State.RUNNING, Ec2State.SHUTTING_DOWN}),
    Ec2State.RUNNING: frozenset({Ec2State.STOPPING, Ec2State.SHUTTING_DOWN}),
    Ec2State.STOPPING: frozenset({Ec2State.STOPPED, Ec2State.SHUTTING_DOWN}),
    Ec2State.STOPPED: frozenset({Ec2State.PENDING, Ec2State.SHUTTING_DOWN}),
    Ec2State.SHUTTING_DOWN: frozenset({Ec2State.TERMINATED}),
    Ec2State.TERMINATED: frozenset(),
}


def status_for_ec2_state(state: str) -> WorkerStatus:
    """The worker status for an EC2 state name; `unknown` for anything EC2 does not define."""
    try:
        return EC2_STATE_TO_STATUS[Ec2State(state)]
    except ValueError:
        return WorkerStatus.UNKNOWN


def is_transitional(status: WorkerStatus) -> bool:
    """Whether the status is on its way to another one (the dashboard shows a timer)."""
    return status in TRANSITIONAL_STATUSES
