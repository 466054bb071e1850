"""Properties of the bus envelope: valid events survive the trip, anything else is refused.

`CloudEvent.from_json` reads what arrives from SNS/SQS; whatever the bytes, it returns an
event or raises `EnvelopeError`, never anything else. And whatever it accepts, the relay
can put on the wire as strict JSON (no `events_unframeable`, no `NaN` for a browser).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

import tests.hypothesis_profiles  # noqa: F401 - loads the budget
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.events.catalog import (
    LabSummary,
    WorkerCreated,
    WorkerLabsUpdated,
    WorkerMetricsUpdated,
    WorkerStatusUpdated,
    WorkerTerminated,
    WorkerView,
)
from cmlfleet.events.envelope import CloudEvent, EnvelopeError
from relay.frames import delivery, wire_data
from tests.sse_client import SseParser

# ---- valid envelopes ---------------------------------------------------------------------------
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
NAME = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)
ZONES = st.just(UTC) | st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Every representable instant, a day inside the edges so that any offset stays in range.
TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES)
PERCENT = st.one_of(st.none(), st.floats(min_value=0, max_value=100))
COUNT = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))
STATUSES = st.sampled_from(WorkerStatus)
MAYBE = st.one_of(st.none(), TEXT)

VIEWS = st.builds(
    WorkerView,
    worker_id=NAME,
    name=NAME,
    owner=NAME,
    status=STATUSES,
    ec2_state=MAYBE,
    instance_id=MAYBE,
    private_ip=MAYBE,
    tags=st.dictionaries(TEXT, TEXT, max_size=3),
    transition_started_at=st.none() | TIMES,
    created_at=TIMES,
    updated_at=TIMES,
    cpu_utilization=PERCENT,
    labs_count=COUNT,
    version=st.integers(min_value=0, max_value=2**53),
)
LABS = st.builds(
    LabSummary,
    lab_id=NAME,
    title=TEXT,
    state=TEXT,
    node_count=st.integers(min_value=0, max_value=500),
    owner=MAYBE,
    modified_at=st.none() | TIMES,
)
PAYLOADS = st.one_of(
    st.builds(WorkerCreated, worker=VIEWS),
    st.builds(
        WorkerStatusUpdated,
        worker_id=NAME,
        old_status=STATUSES,
        new_status=STATUSES,
        ec2_state=MAYBE,
        transition_started_at=st.none() | TIMES,
        reason=MAYBE,
    ),
    st.builds(
        WorkerMetricsUpdated,
        worker_id=NAME,
        cpu_utilization=PERCENT,
        memory_utilization=PERCENT,
        storage_utilization=PERCENT,
        labs_count=COUNT,
        running_nodes=COUNT,
        total_nodes=COUNT,
        collected_at=TIMES,
    ),
    st.builds(
        WorkerLabsUpdated,
        worker_id=NAME,
        labs=st.lists(LABS, max_size=3),
        added=st.lists(NAME, max_size=2),
        trigger=st.sampled_from(["schedule", "manual", "import"]),
    ),
    st.builds(WorkerTerminated, worker_id=NAME, terminated_at=TIMES, terminated_by=NAME),
)
EVENT_IDS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@st.composite
def envelopes(draw: st.DrawFn) -> CloudEvent:
    payload = draw(PAYLOADS)
    return CloudEvent(
        id=draw(EVENT_IDS.filter(lambda i: len(i) <= 128)),
        source=draw(NAME),
        type=payload.event_type,
        time=draw(TIMES),
        subject=draw(NAME),
        data=payload.model_dump(mode="json"),
        workerversion=draw(st.integers(min_value=0, max_value=2**53)),
        owner=draw(NAME),
        ownersub=draw(st.none() | NAME),
    )


# ---- hostile input -----------------------------------------------------------------------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
# Raw JSON values a document could hold that Python's json.dumps would not write.
RAW_VALUES = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        '"\\ud800"',
        '"\\udc00x"',
        '"\\u0000"',
        '"0001-01-01T00:00:00+01:00"',
        '"9999-12-31T23:59:59-01:00"',
        '"2026-02-30T10:00:00Z"',
        '"2026-11-30T10:00:00"',
        "-1",
        "18446744073709551616",
        '{"$ref": "#"}',
    ]
)


# Any instant in any offset, also at the very edges of what Python can represent.
TIMESTAMPS = st.datetimes(timezones=ZONES).map(lambda moment: moment.isoformat()) | st.sampled_from(
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0999-01-01T00:00:00Z"]
)


TERMINATED = (
    '{"specversion": "1.0", "id": "a", "source": "s", "type": "worker.terminated", '
    '"time": "2026-01-01T00:00:00Z", "subject": "w", "owner": "o", "workerversion": 1, '
    '"data": {"worker_id": "w", "terminated_at": "2026-01-01T00:00:00Z", "terminated_by": "x"}}'
)


def parse(document: str | bytes) -> CloudEvent | None:
    """The accepted event, or None when refused with the documented error (and only it)."""
    try:
        return CloudEvent.from_json(document)
    except EnvelopeError:
        return None


def assert_relay_can_send(event: CloudEvent) -> None:
    """The relay frames an accepted event as one SSE event with strict JSON data."""
    frames = delivery(event)
    for frame in (frames.full, frames.masked):
        (read,) = SseParser().feed(frame.decode("utf-8"))
        assert (read.id, read.event) == (event.id, event.type)
        wire = json.loads(read.data, parse_constant=_refuse_constant)
        assert wire["version"] == event.workerversion
        assert wire["worker_id"] == event.subject
    assert json.loads(frames.full.split(b"data: ", 1)[1], parse_constant=_refuse_constant) == (
        json.loads(json.dumps(wire_data(event)))
    )


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} on the wire is not JSON a browser can parse")


@given(envelopes())
def test_a_valid_event_survives_the_json_round_trip_as_text_and_as_bytes(event: CloudEvent) -> None:
    text = event.to_json()

    assert CloudEvent.from_json(text) == event
    assert CloudEvent.from_json(text.encode()) == event
    assert CloudEvent.from_json(text).payload().model_dump(mode="json") == event.data


@given(envelopes())
def test_every_valid_event_can_be_sent_by_the_relay(event: CloudEvent) -> None:
    assert_relay_can_send(event)


@given(st.binary(max_size=300))
@example(b"\xc0\xaf")  # overlong UTF-8 for "/"
@example(b"\xed\xa0\x80")  # a surrogate encoded in UTF-8
@example(b"\xff\xfe{\x00}\x00")  # UTF-16 with a BOM
@example(b'{"id": "\x00"}')
def test_any_bytes_are_an_event_or_an_envelope_error(raw: bytes) -> None:
    parse(raw)


@given(JSON)
def test_any_json_value_is_an_event_or_an_envelope_error(value: Any) -> None:
    parse(json.dumps(value))


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON document, nested ones included."""
    if isinstance(node, dict):
        slots = [(node, key) for key in [*node, "unexpected"]]
        return slots + [slot for value in node.values() for slot in _slots(value)]
    if isinstance(node, list):
        return [(node, index) for index in range(len(node))] + [
            slot for value in node for slot in _slots(value)
        ]
    return []


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> str:
    """A valid envelope's JSON with one value, at any depth, replaced or dropped."""
    document: dict[str, Any] = json.loads(draw(envelopes()).to_json())
    container, key = draw(st.sampled_from(_slots(document)))
    action = draw(st.sampled_from(["drop", "json", "raw", "time"]))
    if action == "drop":
        if isinstance(container, dict):
            container.pop(key, None)
        else:
            del container[key]
        return json.dumps(document)
    placeholder = "\x01placeholder\x01"
    if isinstance(container, dict) or key < len(container):
        container[key] = placeholder
    replacement = {
        "json": lambda: json.dumps(draw(JSON)),
        "raw": lambda: draw(RAW_VALUES),
        "time": lambda: json.dumps(draw(TIMESTAMPS)),
    }[action]()
    return json.dumps(document).replace(json.dumps(placeholder), replacement)


@given(mutated_envelopes())
@example(TERMINATED.replace("2026-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", 1))
@example(TERMINATED.replace('"terminated_by": "x"', '"terminated_by": "x", "extra": NaN'))
@example(TERMINATED.replace('"terminated_by": "x"', '"terminated_by": "x", "extra": -Infinity'))
def test_a_damaged_event_is_refused_or_still_sendable(document: str) -> None:
    event = parse(document)

    if event is not None:
        assert_relay_can_send(event)
