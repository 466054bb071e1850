"""The worker aggregate and the changes that can happen to it.

Each change is a pure function: it takes a worker (and the time), and returns the new
worker with `version` bumped plus the events the change caused, or `None` when nothing
changes. Storing both in one transaction is the caller's job (the outbox).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from cmlfleet.domain.status import (
    EC2_SUCCESSORS,
    FINAL_STATUSES,
    Ec2State,
    WorkerStatus,
    is_transitional,
    status_for_ec2_state,
)
from cmlfleet.events.catalog import (
    EventData,
    LabSummary,
    WorkerCreated,
    WorkerStatusUpdated,
    WorkerTerminated,
    WorkerView,
)
from cmlfleet.ids import new_worker_id
from cmlfleet.timeutil import UtcDateTime

# Set by the account owner on an instance that may be imported. It stays among the tags
# the worker was registered with, which so say the fleet adopted the instance (and never
# checked its software) rather than launched it.
IMPORTABLE_TAG = "cmlfleet:importable"


class Worker(BaseModel):
    """A CML worker: one EC2 instance booted from a CML AMI."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    worker_id: str
    name: str = Field(min_length=1, max_length=128)
    owner: str = Field(min_length=1, max_length=256)
    # The owner's immutable `sub`, when known: a later user given the same name is not them.
    owner_sub: str | None = Field(default=None, min_length=1, max_length=256)
    status: WorkerStatus
    ec2_state: str | None = None
    ec2_state_at: UtcDateTime | None = None  # time of the EC2 report last applied
    instance_id: str | None = None
    instance_type: str | None = None
    ami_id: str | None = None
    region: str | None = None
    private_ip: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    transition_started_at: UtcDateTime | None = None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    terminated_at: UtcDateTime | None = None
    terminated_by: str | None = None
    # Load, as last saved by the metrics collector (saved only when it moved enough).
    cpu_utilization: float | None = None
    memory_utilization: float | None = None
    storage_utilization: float | None = None
    labs_count: int | None = None
    running_nodes: int | None = None
    total_nodes: int | None = None
    metrics_collected_at: UtcDateTime | None = None
    # The worker's CML labs, as last synced (served by /labs, not part of the view).
    labs: list[LabSummary] = Field(default_factory=list)
    labs_synced_at: UtcDateTime | None = None
    version: int = Field(default=0, ge=0)

    @property
    def imported(self) -> bool:
        """Adopted by `import` (the opt-in tag is among its tags), not launched by the fleet."""
        return self.tags.get(IMPORTABLE_TAG) == "true"

    def view(self) -> WorkerView:
        """The worker as clients see it (before any per-role masking).

        Not `owner_sub`: it identifies a person at the identity provider, and no client
        needs it (the relay reads it from the event's `ownersub` extension instead).
        """
        return WorkerView.model_validate(
            self.model_dump(exclude={"labs", "labs_refresh_claimed_at", "owner_sub"})
        )


@dataclass(frozen=True)
class Change:
    """A worker's new state and the events that describe how it got there."""

    worker: Worker
    events: list[EventData] = field(default_factory=list)


def register_worker(
    *,
    name: str,
    owner: str,
    now: datetime,
    owner_sub: str | None = None,
    instance_id: str | None = None,
    instance_type: str | None = None,
    ami_id: str | None = None,
    region: str | None = None,
    ec2_state: str | None = None,
    private_ip: str | None = None,
    tags: dict[str, str] | None = None,
    worker_id: str | None = None,
) -> Change:
    """A new worker, `provisioning` until EC2 reports (or in the state EC2 already reports)."""
    status = status_for_ec2_state(ec2_state) if ec2_state else WorkerStatus.PROVISIONING
    worker = Worker(
        worker_id=worker_id or new_worker_id(),
        name=name,
        owner=owner,
        owner_sub=owner_sub,
        status=status,
        ec2_state=ec2_state,
        # What EC2 reported at registration is as of now: older reports must not undo it.
        # EventBridge times have one-second resolution, so this is kept at that resolution.
        ec2_state_at=_to_second(now) if ec2_state else None,
        instance_id=instance_id,
        instance_type=instance_type,
        ami_id=ami_id,
        region=region,
        private_ip=private_ip,
        tags=tags or {},
        transition_started_at=now if is_transitional(status) else None,
        created_at=now,
        updated_at=now,
        version=1,
    )
    return Change(worker, [WorkerCreated(worker=worker.view())])


def apply_ec2_state(
    worker: Worker, ec2_state: str, *, observed_at: datetime, now: datetime
) -> Change | None:
    """Apply an EC2 state report, or `None` if it is stale or a repeat.

    EC2 notifications arrive at least once and in any order. A report older than the last
    one applied is stale; one with the same timestamp is applied only if EC2's lifecycle
    allows it to follow the current state. A terminated worker never comes back. A newer
    report of the status the worker already has is recorded without an event.
    """
    if worker.status in FINAL_STATUSES:
        return None
    if not _is_newer_report(worker, ec2_state, observed_at):
        return None
    new_status = status_for_ec2_state(ec2_state)
    if new_status == worker.status:
        # Nothing to announce, but the report is the newest: remember it, or an older one
        # delivered after it would pass for the newest (running@5 applied, running@9
        # dropped, stopped@7 arriving last would leave a running instance "stopped").
        # No event, so one version for the write, which keeps concurrent writers honest.
        remembered = {"ec2_state": ec2_state, "ec2_state_at": observed_at}
        return Change(worker.model_copy(update=remembered | {"version": worker.version + 1}))
    started = observed_at if is_transitional(new_status) else None
    updates: dict[str, object] = {
        "status": new_status,
        "ec2_state": ec2_state,
        "ec2_state_at": observed_at,
        "transition_started_at": started,
        "updated_at": now,
        "version": worker.version + 1,
    }
    if new_status == WorkerStatus.TERMINATED and worker.terminated_at is None:
        # Two events (status, terminated): one version each.
        updates |= {
            "terminated_at": observed_at,
            "terminated_by": "ec2",
            "version": worker.version + 2,
        }
    changed = worker.model_copy(update=updates)
    events: list[EventData] = [
        WorkerStatusUpdated(
            worker_id=worker.worker_id,
            old_status=worker.status,
            new_status=new_status,
            ec2_state=ec2_state,
            transition_started_at=started,
        )
    ]
    if new_status == WorkerStatus.TERMINATED and worker.terminated_at is None:
        events.append(
            WorkerTerminated(
                worker_id=worker.worker_id, terminated_at=observed_at, terminated_by="ec2"
            )
        )
    return Change(changed, events)


def _is_newer_report(worker: Worker, ec2_state: str, observed_at: datetime) -> bool:
    if worker.ec2_state_at is None:
        return True
    last, observed = _to_second(worker.ec2_state_at), _to_second(observed_at)
    if observed != last:
        return observed > last
    try:
        current, candidate = Ec2State(worker.ec2_state or ""), Ec2State(ec2_state)
    except ValueError:
        return False
    return candidate in EC2_SUCCESSORS[current]


def _to_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)
