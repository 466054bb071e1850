"""Time-ordered identifiers: UUIDv7 event ids and worker ids."""

from __future__ import annotations

import itertools
import re
import time
import uuid

import pytest

from cmlfleet import ids
from cmlfleet.ids import new_worker_id, uuid7, uuid7_millis

MANY = 10_000


def test_an_id_is_a_valid_uuid_version_7() -> None:
    identifier = uuid7()
    parsed = uuid.UUID(identifier)

    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == identifier
    assert identifier == identifier.lower()


def test_ids_are_strictly_increasing_as_strings_over_many_quick_calls() -> None:
    made = [uuid7() for _ in range(MANY)]

    assert all(earlier < later for earlier, later in itertools.pairwise(made))
    assert all(uuid.UUID(identifier).version == 7 for identifier in made)


def test_ids_stay_increasing_when_more_than_4096_are_made_in_one_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen_ns = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: frozen_ns)
    # The generator's memory is restored afterwards, so later tests see the real clock.
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)

    made = [uuid7() for _ in range(5_000)]

    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert uuid7_millis(made[0]) == frozen_ns // 1_000_000
    assert uuid7_millis(made[-1]) - uuid7_millis(made[0]) in (1, 2)


def test_the_encoded_time_is_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    identifier = uuid7()
    after = time.time_ns() // 1_000_000

    assert before <= uuid7_millis(identifier) <= after + 1


def test_the_encoded_time_of_many_ids_stays_close_to_the_clock() -> None:
    made = [uuid7() for _ in range(1_000)]
    now_ms = time.time_ns() // 1_000_000

    assert abs(uuid7_millis(made[-1]) - now_ms) < 1_000


def test_uuid7_millis_refuses_another_uuid_version() -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_millis(str(uuid.uuid4()))


def test_uuid7_millis_refuses_text_that_is_no_uuid() -> None:
    with pytest.raises(ValueError, match="badly formed"):
        uuid7_millis("w-123")


def test_a_worker_id_is_w_dash_and_twenty_lowercase_hex_digits() -> None:
    assert re.fullmatch(r"w-[0-9a-f]{20}", new_worker_id())


def test_worker_ids_are_unique_and_time_ordered() -> None:
    made = [new_worker_id() for _ in range(1_000)]

    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_the_ids_of_a_moment_lie_between_its_first_and_last_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime, timedelta

    from cmlfleet.ids import first_uuid7_at, last_uuid7_at

    moment = datetime(2026, 11, 30, 10, 0, 0, 123_000, tzinfo=UTC)
    in_ns = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    monkeypatch.setattr(time, "time_ns", lambda: in_ns)
    monkeypatch.setattr(ids, "_last_ms", 0)  # ids never go back in time: start afresh
    made = uuid7()
    assert first_uuid7_at(moment) <= made <= last_uuid7_at(moment)
    later = moment + timedelta(milliseconds=1)
    assert last_uuid7_at(moment) < first_uuid7_at(later)
