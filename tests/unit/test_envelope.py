"""The CloudEvents envelope every bus event travels in, and the event catalog."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from cmlfleet.domain.status import WorkerStatus
from cmlfleet.events.catalog import (
    BUS_EVENT_TYPES,
    EVENT_TYPES,
    AuthExpired,
    Connected,
    EventData,
    Heartbeat,
    Resync,
    SseShutdown,
    WorkerStatusUpdated,
    WorkerTerminated,
)
from cmlfleet.events.envelope import DEFAULT_SOURCE, CloudEvent, EnvelopeError, make_event

WHEN = datetime(2026, 11, 30, 10, 0, 5, tzinfo=UTC)


def status_update(**overrides: object) -> WorkerStatusUpdated:
    values: dict[str, object] = {
        "worker_id": "w-1",
        "old_status": WorkerStatus.PENDING,
        "new_status": WorkerStatus.RUNNING,
        "ec2_state": "running",
        "transition_started_at": None,
    }
    values.update(overrides)
    return WorkerStatusUpdated.model_validate(values)


def an_event(**overrides: object) -> CloudEvent:
    arguments: dict[str, object] = {
        "worker_id": "w-1",
        "version": 3,
        "owner": "alice",
        "time": WHEN,
    }
    arguments.update(overrides)
    return make_event(status_update(), **arguments)  # type: ignore[arg-type]


def as_dict(event: CloudEvent) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(event.to_json())
    return parsed


# ---- round trip ------------------------------------------------------------------------


def test_an_event_survives_a_json_round_trip() -> None:
    event = an_event()

    assert CloudEvent.from_json(event.to_json()) == event


def test_an_event_with_microseconds_and_a_transition_time_survives_a_round_trip() -> None:
    started = datetime(2026, 11, 30, 9, 59, 58, 123456, tzinfo=UTC)
    event = make_event(
        status_update(new_status=WorkerStatus.STOPPING, transition_started_at=started),
        worker_id="w-1",
        version=4,
        owner="alice",
        time=WHEN.replace(microsecond=654321),
    )

    again = CloudEvent.from_json(event.to_json().encode())

    assert again == event
    assert again.time == WHEN.replace(microsecond=654321)
    payload = again.payload()
    assert isinstance(payload, WorkerStatusUpdated)
    assert payload.transition_started_at == started


def test_the_payload_is_the_typed_data_it_was_made_from() -> None:
    payload = WorkerTerminated(worker_id="w-1", terminated_at=WHEN, terminated_by="ec2")
    event = make_event(payload, worker_id="w-1", version=9, owner="alice", time=WHEN)

    assert CloudEvent.from_json(event.to_json()).payload() == payload


def test_make_event_fills_in_the_cloudevents_attributes() -> None:
    event = an_event()

    assert event.specversion == "1.0"
    assert event.type == "worker.status.updated"
    assert event.subject == event.worker_id == "w-1"
    assert event.source == DEFAULT_SOURCE
    assert event.datacontenttype == "application/json"
    assert event.workerversion == 3
    assert event.owner == "alice"
    assert event.time == WHEN


def test_make_event_gives_each_event_a_new_increasing_id() -> None:
    ids = [an_event().id for _ in range(50)]

    assert len(set(ids)) == 50
    assert ids == sorted(ids)


def test_make_event_without_a_time_uses_the_current_utc_time() -> None:
    before = datetime.now(UTC)
    event = make_event(status_update(), worker_id="w-1", version=1, owner="alice")
    after = datetime.now(UTC)

    assert before <= event.time <= after
    assert event.time.utcoffset() == timedelta(0)


# ---- time ------------------------------------------------------------------------------


def test_time_is_written_with_a_z_suffix() -> None:
    text = as_dict(an_event())["time"]

    assert text == "2026-11-30T10:00:05Z"


def test_time_is_never_written_with_a_numeric_utc_offset() -> None:
    raw = an_event(time=WHEN.replace(microsecond=1)).to_json()

    assert "+00:00" not in raw
    assert as_dict(CloudEvent.from_json(raw))["time"] == "2026-11-30T10:00:05.000001Z"


def test_a_time_in_another_zone_is_stored_and_written_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    event = an_event(time=datetime(2026, 11, 30, 11, 0, 5, tzinfo=paris))

    assert event.time == WHEN
    assert event.time.utcoffset() == timedelta(0)
    assert as_dict(event)["time"] == "2026-11-30T10:00:05Z"


def test_times_inside_data_are_also_written_with_a_z_suffix() -> None:
    event = make_event(
        status_update(transition_started_at=WHEN),
        worker_id="w-1",
        version=1,
        owner="alice",
        time=WHEN,
    )

    assert event.data["transition_started_at"] == "2026-11-30T10:00:05Z"
    assert as_dict(event)["data"] == event.data


def test_make_event_rejects_a_naive_time() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        an_event(time=datetime(2026, 11, 30, 10, 0, 5))


def test_from_json_rejects_a_naive_time() -> None:
    document = as_dict(an_event())
    document["time"] = "2026-11-30T10:00:05"

    with pytest.raises(EnvelopeError, match=r"time: .*timezone"):
        CloudEvent.from_json(json.dumps(document))


# ---- invalid messages ------------------------------------------------------------------


def test_an_unknown_type_is_rejected_naming_the_type() -> None:
    document = as_dict(an_event())
    document["type"] = "worker.exploded"

    with pytest.raises(EnvelopeError, match=r"unknown event type 'worker\.exploded'"):
        CloudEvent.from_json(json.dumps(document))


@pytest.mark.parametrize("relay_type", ["connected", "heartbeat", "resync", "auth.expired"])
def test_a_relay_only_type_is_not_accepted_from_the_bus(relay_type: str) -> None:
    document = as_dict(an_event())
    document["type"] = relay_type

    with pytest.raises(EnvelopeError, match=f"unknown event type '{relay_type}'"):
        CloudEvent.from_json(json.dumps(document))


def test_bad_data_for_a_known_type_is_rejected_with_a_readable_message() -> None:
    document = as_dict(an_event())
    document["data"] = {"worker_id": "w-1", "old_status": "pending", "new_status": "flying"}

    with pytest.raises(EnvelopeError) as raised:
        CloudEvent.from_json(json.dumps(document))

    message = str(raised.value)
    assert message.startswith("worker.status.updated data: ")
    assert "new_status" in message
    assert "ec2_state" in message  # the missing field is named too
    assert "errors.pydantic.dev" not in message


def test_a_message_missing_attributes_is_rejected_naming_them() -> None:
    document = as_dict(an_event())
    del document["subject"]
    del document["workerversion"]

    with pytest.raises(EnvelopeError, match="subject") as raised:
        CloudEvent.from_json(json.dumps(document))

    assert "workerversion" in str(raised.value)


@pytest.mark.parametrize("text", ["", "not json", "[]", "null"])
def test_text_that_is_not_an_event_object_is_rejected(text: str) -> None:
    with pytest.raises(EnvelopeError):
        CloudEvent.from_json(text)


def test_another_specversion_is_rejected() -> None:
    document = as_dict(an_event())
    document["specversion"] = "0.3"

    with pytest.raises(EnvelopeError, match="specversion"):
        CloudEvent.from_json(json.dumps(document))


def test_a_negative_worker_version_is_rejected() -> None:
    document = as_dict(an_event())
    document["workerversion"] = -1

    with pytest.raises(EnvelopeError, match="workerversion"):
        CloudEvent.from_json(json.dumps(document))


# ---- relay-only payloads ---------------------------------------------------------------

RELAY_ONLY_PAYLOADS: list[EventData] = [
    Connected(client_id="c-1", server_time=WHEN, heartbeat_seconds=15),
    Heartbeat(server_time=WHEN),
    SseShutdown(reason="deploy", reconnect_after_ms=1000),
    Resync(reason="too far behind"),
    AuthExpired(),
]


@pytest.mark.parametrize(
    "payload", RELAY_ONLY_PAYLOADS, ids=[p.event_type for p in RELAY_ONLY_PAYLOADS]
)
def test_make_event_refuses_a_relay_only_payload(payload: EventData) -> None:
    with pytest.raises(ValueError, match=f"{payload.event_type} is made by the relay"):
        make_event(payload, worker_id="w-1", version=1, owner="alice")


# ---- catalog and extensions ------------------------------------------------------------


def test_the_catalog_has_exactly_the_ten_event_types() -> None:
    assert set(EVENT_TYPES) == {
        "connected",
        "heartbeat",
        "worker.created",
        "worker.status.updated",
        "worker.metrics.updated",
        "worker.labs.updated",
        "worker.terminated",
        "system.sse.shutdown",
        "resync",
        "auth.expired",
    }


def test_each_catalog_entry_is_keyed_by_its_own_type() -> None:
    for name, model in EVENT_TYPES.items():
        assert model.event_type == name


def test_only_worker_events_travel_on_the_bus() -> None:
    assert set(BUS_EVENT_TYPES) == {
        "worker.created",
        "worker.status.updated",
        "worker.metrics.updated",
        "worker.labs.updated",
        "worker.terminated",
    }


def test_the_json_carries_the_workerversion_owner_and_ownersub_extensions() -> None:
    document = as_dict(an_event(version=7, owner="bob", owner_sub="sub-of-bob"))

    assert document["workerversion"] == 7
    assert document["owner"] == "bob"
    assert document["ownersub"] == "sub-of-bob"
    assert document["subject"] == "w-1"
    assert document["specversion"] == "1.0"


def test_the_envelope_json_is_pinned_with_ownersub_last_and_absent_when_unknown() -> None:
    """The bus, the event log and the relay's replay all read these bytes."""
    payload = WorkerTerminated(worker_id="w-1", terminated_at=WHEN, terminated_by="ec2")
    event = CloudEvent(
        id="01a2b3c4-0000-7000-8000-000000000001",
        source="urn:cmlfleet",
        type="worker.terminated",
        time=WHEN,
        subject="w-1",
        data=payload.model_dump(mode="json"),
        workerversion=4,
        owner="bob",
    )
    without = (
        '{"specversion":"1.0","id":"01a2b3c4-0000-7000-8000-000000000001",'
        '"source":"urn:cmlfleet","type":"worker.terminated","time":"2026-11-30T10:00:05Z",'
        '"subject":"w-1","datacontenttype":"application/json","data":{"worker_id":"w-1",'
        '"terminated_at":"2026-11-30T10:00:05Z","terminated_by":"ec2"},"workerversion":4,'
        '"owner":"bob"'
    )

    assert event.to_json() == without + "}"
    with_sub = event.model_copy(update={"ownersub": "sub-of-bob"})
    assert with_sub.to_json() == without + ',"ownersub":"sub-of-bob"}'


@pytest.mark.parametrize("bad_id", ["a\nb", "a\rb", "a b", "a\x00b", "é"])
def test_an_event_id_that_could_not_be_an_sse_id_line_is_rejected(bad_id: str) -> None:
    good = json.loads(
        make_event(
            WorkerTerminated(worker_id="w-1", terminated_at=datetime.now(UTC), terminated_by="x"),
            worker_id="w-1",
            version=2,
            owner="alice",
        ).to_json()
    )
    with pytest.raises(EnvelopeError, match="id"):
        CloudEvent.from_json(json.dumps({**good, "id": bad_id}))
