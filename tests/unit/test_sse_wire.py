"""The exact bytes the relay puts on the wire."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cmlfleet.events.catalog import Connected, Heartbeat, SseShutdown, WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from relay.frames import bus_event_frame, relay_event_frame
from relay.sse import FrameError, ServerSentEvent, comment
from tests.sse_client import SseParser

T0 = datetime(2026, 11, 30, 10, 0, 5, tzinfo=UTC)


def test_a_simple_event_is_id_event_and_data_lines_then_a_blank_line() -> None:
    frame = ServerSentEvent(data='{"a":1}', event="worker.created", id="abc").encode()
    assert frame == b'id: abc\nevent: worker.created\ndata: {"a":1}\n\n'


def test_retry_is_written_as_digits() -> None:
    assert ServerSentEvent(data="x", retry_ms=3000).encode() == b"retry: 3000\ndata: x\n\n"


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_every_kind_of_line_break_in_data_becomes_a_new_data_line(newline: str) -> None:
    frame = ServerSentEvent(data=f"one{newline}two").encode()
    assert frame == b"data: one\ndata: two\n\n"


def test_a_payload_cannot_forge_an_id_or_an_event_field() -> None:
    hostile = "x\nid: forged\nevent: admin\n\ndata: injected"
    frame = ServerSentEvent(data=hostile, event="worker.created", id="real").encode()
    events = SseParser().feed(frame.decode())
    assert len(events) == 1
    assert events[0].id == "real"
    assert events[0].event == "worker.created"
    assert events[0].data == hostile  # the payload survives intact, as data


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
@pytest.mark.parametrize("field", ["id", "event"])
def test_id_and_event_refuse_cr_lf_and_nul(field: str, bad: str) -> None:
    with pytest.raises(FrameError):
        ServerSentEvent(data="x", **{field: bad})


def test_a_comment_frame_is_ignored_by_parsers() -> None:
    assert comment("keep-alive") == b": keep-alive\n\n"
    assert SseParser().feed(comment("keep-alive").decode()) == []


def test_a_bus_event_is_framed_with_its_id_type_and_one_line_of_wire_json() -> None:
    event = CloudEvent(
        id="01a2b3c4-0000-7000-8000-000000000001",
        source="urn:cmlfleet",
        type="worker.status.updated",
        time=T0,
        subject="w-1",
        data={"worker_id": "w-1", "old_status": "pending", "new_status": "running"},
        workerversion=3,
        owner="alice",
    )
    assert bus_event_frame(event) == (
        b"id: 01a2b3c4-0000-7000-8000-000000000001\n"
        b"event: worker.status.updated\n"
        b'data: {"id":"01a2b3c4-0000-7000-8000-000000000001","type":"worker.status.updated",'
        b'"time":"2026-11-30T10:00:05Z","worker_id":"w-1","version":3,'
        b'"data":{"worker_id":"w-1","old_status":"pending","new_status":"running"}}\n\n'
    )


def test_newlines_inside_event_data_stay_inside_one_json_line() -> None:
    payload = WorkerStatusUpdated(
        worker_id="w-1",
        old_status="running",
        new_status="stopping",
        ec2_state="stopping",
        transition_started_at=T0,
        reason="line one\nid: forged\r\n\r\nevent: x",
    )
    event = make_event(payload, worker_id="w-1", version=2, owner="bob")
    frame = bus_event_frame(event)
    assert frame.count(b"\n") == 4  # id, event, data, blank line
    parsed = SseParser().feed(frame.decode())
    assert [e.id for e in parsed] == [event.id]
    assert parsed[0].json()["data"]["reason"] == payload.reason


def test_relay_events_carry_no_id_so_the_client_cursor_does_not_move() -> None:
    frame = relay_event_frame(Heartbeat(server_time=T0))
    assert frame == b'event: heartbeat\ndata: {"server_time":"2026-11-30T10:00:05Z"}\n\n'
    assert b"id:" not in frame


def test_connected_carries_the_retry_hint() -> None:
    frame = relay_event_frame(
        Connected(client_id="c1", server_time=T0, heartbeat_seconds=30), retry_ms=3000
    )
    assert frame.startswith(b"event: connected\nretry: 3000\ndata: ")
    assert SseParser().feed(frame.decode())[0].json() == {
        "client_id": "c1",
        "server_time": "2026-11-30T10:00:05Z",
        "heartbeat_seconds": 30.0,
        "replay": {"requested": None, "status": "none", "replayed": 0},
    }


def test_shutdown_tells_the_client_when_to_come_back_twice_over() -> None:
    frame = relay_event_frame(
        SseShutdown(reason="relay stopping", reconnect_after_ms=1234), retry_ms=1234
    )
    event = SseParser().feed(frame.decode())[0]
    assert event.event == "system.sse.shutdown"
    assert event.retry == 1234
    assert event.json()["reconnect_after_ms"] == 1234


def test_the_test_parser_joins_a_crlf_split_across_chunks() -> None:
    parser = SseParser()
    assert parser.feed("data: a\r") == []
    assert parser.feed("\n\r\n")[0].data == "a"
