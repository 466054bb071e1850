"""Applying EC2 instance state-change notifications to workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cmlfleet.adapters.ec2 import STACK_TAG, WORKER_ID_TAG, CloudError, Ec2Fleet
from cmlfleet.adapters.repository import WorkerRepository
from cmlfleet.domain.worker import Worker, apply_ec2_state
from cmlfleet.services.changes import save_change
from cmlfleet.timeutil import UtcDateTime, utc_now

logger = Logger(child=True)

DETAIL_TYPE = "EC2 Instance State-change Notification"


# How long to wait for a just-launched worker to be saved before giving the event back.
UNSAVED_WORKER_WAITS = (0.25, 0.5, 1.0, 2.0)


class InvalidNotificationError(ValueError):
    """The event is not an EC2 state-change notification we can use; retrying cannot help."""


class WorkerNotSavedYetError(RuntimeError):
    """The instance is this stack's (its tags say so) but its worker is not saved yet: the
    event came before the launch finished saving. Raised so Lambda runs the event again."""


class Ec2StateDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    instance_id: str = Field(alias="instance-id", pattern=r"^i-[0-9a-f]{8,17}$")
    state: str = Field(min_length=1, max_length=32)


class Ec2StateChangeNotification(BaseModel):
    """The EventBridge envelope of an EC2 state change (moto omits `account`)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    time: UtcDateTime
    region: str | None = None
    account: str | None = None
    resources: list[str] = Field(default_factory=list)
    detail: Ec2StateDetail


@dataclass
class StateChangeOutcome:
    """What handling one notification did; returned by the handler and logged."""

    status: Literal["applied", "unchanged", "ignored"]
    instance_id: str
    state: str
    worker_id: str | None = None
    version: int | None = None
    events: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_notification(event: object) -> Ec2StateChangeNotification:
    """Validate the raw EventBridge event, or raise `InvalidNotificationError` saying why."""
    try:
        return Ec2StateChangeNotification.model_validate(event)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'event'}: {item['msg']}"
            for item in error.errors(include_url=False)[:5]
        )
        raise InvalidNotificationError(problems) from None


def locate_worker(
    instance_id: str,
    repository: WorkerRepository,
    fleet: Ec2Fleet,
    *,
    stack: str,
    waits: Sequence[float] = UNSAVED_WORKER_WAITS,
    pause: Callable[[float], None] = time.sleep,
) -> Worker | None:
    """The worker of an instance, or None if the instance is not this stack's.

    The index lookup is eventually consistent, so a worker saved a moment ago may not be
    in it yet: the instance's claim item (written in the worker's own transaction) is read
    consistently next. An instance launched so recently that even that is missing is known
    by its tags; its worker is waited for briefly, then `WorkerNotSavedYetError` is raised
    rather than the event dropped.
    """
    worker = repository.find_by_instance_id(instance_id)
    if worker is not None:
        return worker
    worker_id = repository.worker_of_instance(instance_id)
    if worker_id is not None:
        return repository.get(worker_id)
    tags = _tags_of(fleet, instance_id)
    worker_id = tags.get(WORKER_ID_TAG)
    if tags.get(STACK_TAG) != stack or not worker_id:
        return None
    for wait in (0.0, *waits):
        if wait:
            pause(wait)
        worker = repository.get(worker_id)
        if worker is not None:
            return worker
    raise WorkerNotSavedYetError(f"instance {instance_id} is worker {worker_id}, not saved yet")


def _tags_of(fleet: Ec2Fleet, instance_id: str) -> dict[str, str]:
    try:
        return fleet.describe(instance_id).tags
    except CloudError as error:
        if error.not_found:
            return {}
        raise


def record_state_change(
    notification: Ec2StateChangeNotification,
    worker: Worker,
    repository: WorkerRepository,
    *,
    source: str,
    clock: Callable[[], datetime] = utc_now,
) -> StateChangeOutcome:
    """Apply the reported state to the worker; save it with its events in one transaction.

    Safe to repeat: a duplicate, stale or unchanged report saves nothing. A concurrent
    writer makes the save fail on `version`; the change is then re-applied to a fresh read.
    """
    detail = notification.detail
    outcome = StateChangeOutcome("unchanged", detail.instance_id, detail.state, worker.worker_id)
    saved = save_change(
        repository,
        worker,
        lambda current: apply_ec2_state(
            current, detail.state, observed_at=notification.time, now=clock()
        ),
        source=source,
    )
    if saved.worker is None:
        outcome.status = "ignored"
    elif saved.change is None:
        outcome.version = saved.worker.version
    else:
        # A newer report of the same status is saved (its time matters) but changes nothing.
        outcome.status = "applied" if saved.change.events else "unchanged"
        outcome.version = saved.worker.version
        outcome.events = [payload.event_type for payload in saved.change.events]
    return outcome
