"""What a reconnecting client missed: a ring of recent events, and the event log behind it.

The ring holds the last `RELAY_RING_SIZE` events this relay delivered, in delivery order.
A cursor found there replays exactly what came after it. A cursor the ring does not hold
(older, or from another relay) is looked up in the DynamoDB event log, where events are
kept by id (time-ordered) for the TTL; a cursor found in neither gets `resync`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cmlfleet.adapters.repository import hour_partition
from cmlfleet.events.envelope import CloudEvent, EnvelopeError
from cmlfleet.ids import uuid7_millis


@dataclass(frozen=True)
class Replay:
    status: Literal["none", "replayed", "resync"]
    events: list[CloudEvent]
    reason: str = ""


class EventRing:
    """The last `capacity` events, by id, in the order they were delivered."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._events: OrderedDict[str, CloudEvent] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: CloudEvent) -> bool:
        """Remember an event; False if it was already there (a duplicate delivery)."""
        if event.id in self._events:
            return False
        self._events[event.id] = event
        while len(self._events) > self._capacity:
            self._events.popitem(last=False)
        return True

    def after(self, cursor: str) -> list[CloudEvent] | None:
        """The events delivered after `cursor`, or None if the ring does not hold it."""
        if cursor not in self._events:
            return None
        found, missed = False, []
        for event_id, event in self._events.items():
            if found:
                missed.append(event)
            elif event_id == cursor:
                found = True
        return missed


class DynamoDbEventLog:
    """Reads the outbox items of the workers table as an event log (sorted by id)."""

    def __init__(self, table_name: str, client: Any, max_events: int = 5000) -> None:
        self._table, self._client, self._max = table_name, client, max_events

    def after(self, cursor: str, now: datetime) -> list[CloudEvent] | None:
        """Events after `cursor`, in id order; None if the log does not know the cursor
        (expired or never existed) or more than `max_events` were missed."""
        try:
            started = datetime.fromtimestamp(uuid7_millis(cursor) / 1000, UTC)
        except ValueError:
            return None
        if not self._exists(cursor, started) or started > now + timedelta(minutes=5):
            return None
        events: list[CloudEvent] = []
        hour = started.replace(minute=0, second=0, microsecond=0)
        while hour <= now:
            events += self._query(hour_partition(hour), cursor)
            if len(events) > self._max:
                return None
            hour += timedelta(hours=1)
        return events

    def latest(self, now: datetime, limit: int, hours: int = 2) -> list[CloudEvent]:
        """Up to `limit` newest events of the last `hours`, oldest first (to warm a ring)."""
        events: list[CloudEvent] = []
        hour = now.replace(minute=0, second=0, microsecond=0)
        for _ in range(hours):
            page = self._query(hour_partition(hour), None, newest=limit)
            events = page + events
            if len(events) >= limit:
                break
            hour -= timedelta(hours=1)
        return events[-limit:]

    def _exists(self, cursor: str, at: datetime) -> bool:
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": hour_partition(at)}, "sk": {"S": cursor}},
            ProjectionExpression="pk",
        )
        return "Item" in response

    def _query(self, partition: str, after: str | None, newest: int = 0) -> list[CloudEvent]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk" + (" AND sk > :after" if after else ""),
            "ExpressionAttributeValues": {":pk": {"S": partition}}
            | ({":after": {"S": after}} if after else {}),
        }
        if newest:
            request |= {"ScanIndexForward": False, "Limit": newest}
        events: list[CloudEvent] = []
        while True:
            response = self._client.query(**request)
            for item in response.get("Items", []):
                try:
                    events.append(CloudEvent.from_json(item["event"]["S"]))
                except (EnvelopeError, KeyError):
                    continue  # a corrupt item is the publisher's problem, not the client's
            token = response.get("LastEvaluatedKey")
            if not token or newest:
                break
            request["ExclusiveStartKey"] = token
        return sorted(events, key=lambda e: e.id) if newest else events
