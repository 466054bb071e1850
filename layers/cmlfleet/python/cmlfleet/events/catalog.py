"""The event catalog: one pydantic model per event type, and nothing else.

Adding an event type touches this module and its consumers. Bus events describe a change
to one worker and travel inside a `CloudEvent`; relay events are made by the relay for its
own clients and never cross the bus.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from cmlfleet.domain.status import WorkerStatus
from cmlfleet.timeutil import UtcDateTime


class EventData(BaseModel):
    """Base of every event's `data`. Unknown fields are ignored so producers can grow."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    event_type: ClassVar[str]
    on_bus: ClassVar[bool] = True


class WorkerView(BaseModel):
    """Everything the dashboard shows about a worker; the snapshot and `worker.created`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    worker_id: str
    name: str
    owner: str
    status: WorkerStatus
    ec2_state: str | None = None
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
    cpu_utilization: float | None = None
    memory_utilization: float | None = None
    storage_utilization: float | None = None
    labs_count: int | None = None
    running_nodes: int | None = None
    total_nodes: int | None = None
    metrics_collected_at: UtcDateTime | None = None
    version: int


class WorkerCreated(EventData):
    event_type: ClassVar[str] = "worker.created"
    worker: WorkerView


class WorkerStatusUpdated(EventData):
    event_type: ClassVar[str] = "worker.status.updated"
    worker_id: str
    old_status: WorkerStatus
    new_status: WorkerStatus
    ec2_state: str | None
    transition_started_at: UtcDateTime | None
    reason: str | None = None


class WorkerMetricsUpdated(EventData):
    event_type: ClassVar[str] = "worker.metrics.updated"
    worker_id: str
    cpu_utilization: float | None = Field(default=None, ge=0, le=100)
    memory_utilization: float | None = Field(default=None, ge=0, le=100)
    storage_utilization: float | None = Field(default=None, ge=0, le=100)
    labs_count: int | None = Field(default=None, ge=0)
    running_nodes: int | None = Field(default=None, ge=0)
    total_nodes: int | None = Field(default=None, ge=0)
    collected_at: UtcDateTime


class LabSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    lab_id: str
    title: str
    state: str
    node_count: int = Field(ge=0)
    owner: str | None = None
    description: str | None = None
    modified_at: UtcDateTime | None = None


class WorkerLabsUpdated(EventData):
    event_type: ClassVar[str] = "worker.labs.updated"
    worker_id: str
    labs: list[LabSummary]
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    trigger: Literal["schedule", "manual", "import"] = "schedule"


class WorkerTerminated(EventData):
    event_type: ClassVar[str] = "worker.terminated"
    worker_id: str
    terminated_at: UtcDateTime
    terminated_by: str


class ReplayOutcome(BaseModel):
    """What the relay did with a client's `Last-Event-ID` when it connected."""

    model_config = ConfigDict(frozen=True)

    requested: str | None = None
    status: Literal["none", "replayed", "resync"] = "none"
    replayed: int = 0


class Connected(EventData):
    event_type: ClassVar[str] = "connected"
    on_bus: ClassVar[bool] = False
    client_id: str
    server_time: UtcDateTime
    heartbeat_seconds: float
    replay: ReplayOutcome = Field(default_factory=ReplayOutcome)


class Heartbeat(EventData):
    event_type: ClassVar[str] = "heartbeat"
    on_bus: ClassVar[bool] = False
    server_time: UtcDateTime


class SseShutdown(EventData):
    event_type: ClassVar[str] = "system.sse.shutdown"
    on_bus: ClassVar[bool] = False
    reason: str
    reconnect_after_ms: int = Field(ge=0)


class Resync(EventData):
    event_type: ClassVar[str] = "resync"
    on_bus: ClassVar[bool] = False
    reason: str


class AuthExpired(EventData):
    event_type: ClassVar[str] = "auth.expired"
    on_bus: ClassVar[bool] = False


_ALL: tuple[type[EventData], ...] = (
    WorkerCreated,
    WorkerStatusUpdated,
    WorkerMetricsUpdated,
    WorkerLabsUpdated,
    WorkerTerminated,
    Connected,
    Heartbeat,
    SseShutdown,
    Resync,
    AuthExpired,
)

EVENT_TYPES: dict[str, type[EventData]] = {model.event_type: model for model in _ALL}
"""Every event type by its name, as it appears in CloudEvents `type` and SSE `event:`."""

BUS_EVENT_TYPES: dict[str, type[EventData]] = {
    name: model for name, model in EVENT_TYPES.items() if model.on_bus
}
"""The event types that travel on the bus (each about one worker, with a version)."""
