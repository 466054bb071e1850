"""What a reconnecting client missed: a ring of recent events, and the event log behind it.

The ring holds the last `RELAY_RING_SIZE` events this relay delivered, in delivery order.
A cursor found there replays exactly what came after it. A cursor the ring does not hold
(older, or from another relay) is looked up in the DynamoDB event log, where events are
kept by id (time-ordered) for the TTL; a cursor found in neither gets `resync`.

Both are read with the replay cap (`RELAY_REPLAY_MAX`) in hand: a client that missed more
than that gets `resync` too, and neither store does more work than the cap to say so (the
ring walks back at most that many events; the log reads pages of at most that many items,
only their event text, and stops once the cap is passed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
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


class TooManyMissedError(Exception):
    """The cursor is known, but more than the replay cap came after it."""


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

    def after(self, cursor: str, limit: int) -> list[CloudEvent] | None:
        """The events delivered after `cursor`, or None if the ring does not hold it.

        Walks back from the newest event, so the cost is bounded by `limit`, not by the
        ring; raises `TooManyMissedError` if more than `limit` came after the cursor.
        """
        if cursor not in self._events:
            return None
        missed: list[CloudEvent] = []
        for event_id in reversed(self._events):
            if event_id == cursor:
                missed.reverse()
                return missed
            if len(missed) == limit:
                raise TooManyMissedError
            missed.append(self._events[event_id])
        raise AssertionError("unreachable: the cursor is in the ring")

    def get(self, event_id: str) -> CloudEvent | None:
        return self._events.get(event_id)


class DynamoDbEventLog:
    """Reads the outbox items of the workers table as an event log (sorted by id).

    `max_age` bounds how far back a cursor is looked for: each hour since the cursor is one
    partition to query, so a day-old cursor would cost dozens of reads to find out what a
    client that has been away that long needs anyway, a fresh state (`resync`).
    """

    def __init__(
        self,
        table_name: str,
        client: Any,
        max_events: int = 5000,
        max_age: timedelta = timedelta(hours=24),
    ) -> None:
        self._table, self._client, self._max = table_name, client, max_events
        self._max_age = max_age

    def after(
        self,
        cursor: str,
        now: datetime,
        admit_cursor: Callable[[CloudEvent], bool] = lambda _: True,
    ) -> list[CloudEvent] | None:
        """Events after `cursor`, in id order; None if the log does not know the cursor
        (expired, older than `max_age` or never existed) or `admit_cursor` refuses it.

        Raises `TooManyMissedError` as soon as more than `max_events` are found.
        """
        try:
            started = datetime.fromtimestamp(uuid7_millis(cursor) / 1000, UTC)
        except ValueError:
            return None
        if not now - self._max_age <= started <= now + timedelta(minutes=5):
            return None
        last_seen = self.get(cursor, started)
        if last_seen is None or not admit_cursor(last_seen):
            return None
        events: list[CloudEvent] = []
        hour = started.replace(minute=0, second=0, microsecond=0)
        while hour <= now:
            events += self._query(hour_partition(hour), cursor, room=self._max - len(events))
            hour += timedelta(hours=1)
        return events

    def get(self, event_id: str, at: datetime) -> CloudEvent | None:
        """One event by id (`at` is its time, which names its partition)."""
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": hour_partition(at)}, "sk": {"S": event_id}},
            ProjectionExpression="#event",
            ExpressionAttributeNames={"#event": "event"},
        )
        item = response.get("Item")
        try:
            return CloudEvent.from_json(item["event"]["S"]) if item else None
        except (EnvelopeError, KeyError):
            return None

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

    def _query(
        self, partition: str, after: str | None, newest: int = 0, room: int = 0
    ) -> list[CloudEvent]:
        """A partition's events after `after` (at most `room`, else `TooManyMissedError`),
        or its `newest` ones."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk" + (" AND sk > :after" if after else ""),
            "ExpressionAttributeValues": {":pk": {"S": partition}}
            | ({":after": {"S": after}} if after else {}),
            "ProjectionExpression": "#event",
            "ExpressionAttributeNames": {"#event": "event"},
        }
        if newest:
            request |= {"ScanIndexForward": False, "Limit": newest}
        events: list[CloudEvent] = []
        while True:
            if not newest:
                # One more than there is room for: finding it is enough to know.
                request["Limit"] = max(1, room - len(events) + 1)
            response = self._client.query(**request)
            for item in response.get("Items", []):
                try:
                    events.append(CloudEvent.from_json(item["event"]["S"]))
                except (EnvelopeError, KeyError):
                    continue  # a corrupt item is the publisher's problem, not the client's
            if not newest and len(events) > room:
                raise TooManyMissedError
            token = response.get("LastEvaluatedKey")
            if not token or newest:
                break
            request["ExclusiveStartKey"] = token
        return sorted(events, key=lambda e: e.id) if newest else events
