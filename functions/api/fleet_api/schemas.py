"""Request and response bodies (separate from the domain models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cmlfleet.adapters.ec2 import INSTANCE_TYPE_PATTERN
from cmlfleet.events.catalog import LabSummary, WorkerView
from cmlfleet.timeutil import UtcDateTime

TEXT = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no control characters (C0, DEL, C1)


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=64, pattern=TEXT)
    owner: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)
    instance_type: str | None = Field(default=None, pattern=INSTANCE_TYPE_PATTERN)


class WorkerImport(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instance_id: str = Field(pattern=r"^i-[0-9a-f]{8,17}$")
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=TEXT)
    owner: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)


class WorkerList(BaseModel):
    workers: list[WorkerView]


class StreamTicket(BaseModel):
    ticket: str
    expires_at: int
    stream_url: str


class Health(BaseModel):
    status: str
    version: str


class WorkerLabs(BaseModel):
    worker_id: str
    labs: list[LabSummary]
    synced_at: UtcDateTime | None
    changed: bool = Field(default=False, description="this refresh found a change")
