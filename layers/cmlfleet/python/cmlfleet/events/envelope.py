"""The CloudEvents 1.0 envelope (structured JSON mode) every bus event travels in."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cmlfleet.events.catalog import BUS_EVENT_TYPES, EventData
from cmlfleet.ids import uuid7
from cmlfleet.timeutil import UtcDateTime, utc_now

DEFAULT_SOURCE = "urn:cmlfleet"


class EnvelopeError(ValueError):
    """A message that is not a valid CML Fleet CloudEvent; the text says what is wrong."""


class CloudEvent(BaseModel):
    """One domain event: CloudEvents attributes plus `workerversion`, `owner` and `ownersub`
    extensions (`ownersub`: the owner's `sub`, absent when not known; the relay lets a user
    see the event only if both the name and, when present, the sub are theirs)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"] = "1.0"
    # Printable ASCII without spaces: the id becomes the SSE `id:` line and the replay cursor.
    id: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    source: str = Field(min_length=1, max_length=256)
    type: str
    time: UtcDateTime
    subject: str = Field(min_length=1, max_length=128)
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]
    workerversion: int = Field(ge=0)
    owner: str = Field(min_length=1, max_length=256)
    ownersub: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("ownersub", mode="before")
    @classmethod
    def _empty_is_unknown(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("data")
    @classmethod
    def _data_is_strict_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        # NaN and Infinity parse, but the relay would write them into `data:` lines that
        # a browser's JSON.parse refuses: one such event would break every dashboard.
        json.dumps(data, allow_nan=False)
        return data

    @property
    def worker_id(self) -> str:
        return self.subject

    def payload(self) -> EventData:
        """The typed `data`, validated against the catalog model of this event's type."""
        return BUS_EVENT_TYPES[self.type].model_validate(self.data)

    def to_json(self) -> str:
        # An extension without a value is left out (CloudEvents has no null attributes), so
        # events of owners without a known sub keep the bytes they had before it existed.
        return self.model_dump_json(exclude={"ownersub"} if self.ownersub is None else None)

    @classmethod
    def from_json(cls, text: str | bytes) -> CloudEvent:
        """Parse and validate a bus message, raising `EnvelopeError` with a readable reason."""
        try:
            event = cls.model_validate_json(text)
        except ValidationError as error:
            raise EnvelopeError(_describe(error)) from None
        model = BUS_EVENT_TYPES.get(event.type)
        if model is None:
            raise EnvelopeError(f"unknown event type {event.type!r}")
        try:
            model.model_validate(event.data)
        except ValidationError as error:
            raise EnvelopeError(f"{event.type} data: {_describe(error)}") from None
        return event


def make_event(
    payload: EventData,
    *,
    worker_id: str,
    version: int,
    owner: str,
    owner_sub: str | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
) -> CloudEvent:
    """Wrap a bus event's data in a new envelope with a fresh time-ordered id."""
    if not payload.on_bus:
        raise ValueError(f"{payload.event_type} is made by the relay and never goes on the bus")
    return CloudEvent(
        id=uuid7(),
        source=source,
        type=payload.event_type,
        time=time or utc_now(),
        subject=worker_id,
        data=payload.model_dump(mode="json"),
        workerversion=version,
        owner=owner,
        ownersub=owner_sub,
    )


def envelopes(
    payloads: list[EventData],
    *,
    worker_id: str,
    owner: str,
    version: int,
    source: str,
    owner_sub: str | None = None,
) -> list[CloudEvent]:
    """Envelopes for the events of one change that brought the worker to `version`.

    A change with several events bumped the version once per event, so each event gets a
    version of its own, counting up to `version`: a consumer that keeps only newer
    versions never drops the second event of a change.
    """
    first = version - len(payloads) + 1
    return [
        make_event(
            payload,
            worker_id=worker_id,
            version=first + index,
            owner=owner,
            owner_sub=owner_sub,
            source=source,
        )
        for index, payload in enumerate(payloads)
    ]


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "message"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)
