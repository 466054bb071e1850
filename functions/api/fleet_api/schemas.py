"""Request and response bodies (separate from the domain models)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from cmlfleet.adapters.ec2 import INSTANCE_TYPE_PATTERN
from cmlfleet.events.catalog import LabSummary, WorkerView
from cmlfleet.timeutil import UtcDateTime

TEXT = r"^[^\x00-\x1f\x7f-\x9f]+$"  # no control characters (C0, DEL, C1)
# The owner's `sub` at the identity provider (admins, when `owner` is another user): without
# it a worker is matched by name alone, and a later user given that name would see it.
OwnerSub = Annotated[str | None, Field(min_length=1, max_length=256, pattern=TEXT)]


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=64, pattern=TEXT)
    owner: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)
    owner_sub: OwnerSub = None
    instance_type: str | None = Field(default=None, pattern=INSTANCE_TYPE_PATTERN)


class WorkerImport(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instance_id: str = Field(pattern=r"^i-[0-9a-f]{8,17}$")
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=TEXT)
    owner: str | None = Field(default=None, min_length=1, max_length=128, pattern=TEXT)
    owner_sub: OwnerSub = None


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


class CmlCertificateConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sha256: str = Field(
        pattern=r"^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$",
        description="the certificate's SHA-256 as read on the CML host (colons optional)",
    )


class CmlCertificatePublic(BaseModel):
    worker_id: str
    state: Literal["none", "pending", "pinned"] = Field(
        description="none: never contacted; pending: awaits an admin's confirmation (no "
        "credentials are sent); pinned: only this certificate is accepted"
    )
    sha256: str | None = Field(default=None, description="None until first contact")
    fetched_at: UtcDateTime | None = None
