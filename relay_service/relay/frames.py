"""The frames the relay sends: bus events in the wire format, and its own events."""

from __future__ import annotations

import json
from typing import Any

from cmlfleet.access import may_see, visible_view
from cmlfleet.events.catalog import EventData, WorkerCreated, WorkerView
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.identity import Principal, Role
from cmlfleet.timeutil import format_rfc3339
from relay.hub import METRICS_EVENT, Delivery, Subscription
from relay.sse import ServerSentEvent


def wire_data(event: CloudEvent) -> dict[str, Any]:
    """A bus event's `data:` on the wire: `{id, type, time, worker_id, version, data}`."""
    return {
        "id": event.id,
        "type": event.type,
        "time": format_rfc3339(event.time),
        "worker_id": event.subject,
        "version": event.workerversion,
        "data": event.data,
    }


def bus_event_frame(event: CloudEvent) -> bytes:
    """A bus event as one SSE frame whose `id:` is the event id (the replay cursor)."""
    return ServerSentEvent(
        id=event.id, event=event.type, data=_one_line_json(wire_data(event))
    ).encode()


def delivery(event: CloudEvent) -> Delivery:
    """The event framed once for readers who see everything and once, masked, for owners."""
    full = bus_event_frame(event)
    masked = full
    if event.type == METRICS_EVENT:
        # No AWS-internal fields in metrics: one frame for all, and it may be coalesced.
        return Delivery(
            event.id,
            event.owner,
            full,
            full,
            event.subject,
            event.type,
            event.subject,
            _one_line_json(wire_data(event)),
            event.ownersub,
        )
    if event.type == WorkerCreated.event_type:
        view = WorkerView.model_validate(event.data["worker"])
        as_user = Principal(subject="", username=event.owner, role=Role.USER, expires_at=0)
        data = {"worker": visible_view(as_user, view).model_dump(mode="json")}
        masked = ServerSentEvent(
            id=event.id,
            event=event.type,
            data=_one_line_json(wire_data(event) | {"data": data}),
        ).encode()
    return Delivery(
        event.id, event.owner, full, masked, event.subject, event.type, owner_sub=event.ownersub
    )


def receives(subscription: Subscription, event: CloudEvent) -> bool:
    """Whether this client gets `event` at all: decided on the event, before any framing,
    by the same rules as `Subscription.frame_for` (what it asked for, what it may see)."""
    if not subscription.interest.wants_kind(event.subject, event.type):
        return False
    principal = subscription.principal
    return principal is None or may_see(principal, event.owner, event.ownersub)


def relay_event_frame(payload: EventData, *, retry_ms: int | None = None) -> bytes:
    """One of the relay's own events. It carries no `id:`, so the client's cursor stays put."""
    return ServerSentEvent(
        event=payload.event_type,
        data=_one_line_json(payload.model_dump(mode="json")),
        retry_ms=retry_ms,
    ).encode()


def _one_line_json(value: dict[str, Any]) -> str:
    # json.dumps escapes control characters inside strings, so this is always one line.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
