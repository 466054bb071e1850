"""Applying EC2 instance state-change notifications to workers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cmlfleet.adapters.repository import WorkerRepository
from cmlfleet.domain.worker import Worker, apply_ec2_state
from cmlfleet.services.changes import save_change
from cmlfleet.timeutil import UtcDateTime, utc_now

logger = Logger(child=True)

DETAIL_TYPE = "EC2 Instance State-change Notification"


class InvalidNotificationError(ValueError):
    """The event is not an EC2 state-change notification we can use; retrying cannot help."""


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
