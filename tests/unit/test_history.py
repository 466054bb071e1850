"""The replay ring on its own."""

from __future__ import annotations

from cmlfleet.events.catalog import WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from relay.history import EventRing


def event(version: int) -> CloudEvent:
    payload = WorkerStatusUpdated(
        worker_id="w-1",
        old_status="running",
        new_status="stopping",
        ec2_state=None,
        transition_started_at=None,
    )
    return make_event(payload, worker_id="w-1", version=version, owner="alice")


def test_the_ring_replays_exactly_what_came_after_the_cursor_in_delivery_order() -> None:
    ring = EventRing(10)
    events = [event(v) for v in range(1, 6)]
    for e in (events[0], events[2], events[1], events[3], events[4]):  # delivered out of id order
        ring.add(e)
    assert [e.id for e in ring.after(events[2].id, 100) or []] == [
        events[1].id,
        events[3].id,
        events[4].id,
    ]
    assert ring.after(events[4].id, 100) == []


def test_a_cursor_the_ring_does_not_hold_is_not_found() -> None:
    ring = EventRing(3)
    events = [event(v) for v in range(1, 6)]
    for e in events:
        ring.add(e)
    assert len(ring) == 3
    assert ring.after(events[0].id, 100) is None  # pushed out
    assert ring.after("never-seen", 100) is None


def test_a_duplicate_delivery_is_recognised() -> None:
    ring = EventRing(3)
    first = event(1)
    assert ring.add(first) is True
    assert ring.add(first) is False
