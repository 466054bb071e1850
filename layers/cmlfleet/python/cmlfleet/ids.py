"""Time-ordered identifiers (UUIDv7, RFC 9562) for events and workers.

Event ids must sort in the order events were made, because the relay replays "everything
after id X". UUIDv7 puts the millisecond timestamp first; within one millisecond a counter
in `rand_a` keeps ids strictly increasing from this process.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def uuid7() -> str:
    """A new UUIDv7 as a lowercase string; later calls in this process sort after earlier ones."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, int.from_bytes(os.urandom(2)) & 0x3FF
        elif _counter < _COUNTER_MAX:
            _counter += 1
        else:  # 4,096 ids in one millisecond: borrow the next millisecond
            _last_ms, _counter = _last_ms + 1, 0
        ms, counter = _last_ms, _counter
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def uuid7_millis(identifier: str) -> int:
    """The Unix time in milliseconds encoded in a UUIDv7."""
    parsed = uuid.UUID(identifier)
    if parsed.version != 7:
        raise ValueError(f"not a UUIDv7: {identifier!r}")
    return parsed.int >> 80


def first_uuid7_at(moment: datetime) -> str:
    """The smallest UUIDv7 of the moment's millisecond: ids sort as text like numbers, so
    ids between `first_uuid7_at(a)` and `last_uuid7_at(b)` were made from a to b."""
    return str(uuid.UUID(int=_millis(moment) << 80))


def last_uuid7_at(moment: datetime) -> str:
    """The largest UUIDv7 of the moment's millisecond."""
    return str(uuid.UUID(int=((_millis(moment) + 1) << 80) - 1))


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (a float timestamp can be one off)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def new_worker_id() -> str:
    """A worker id: short, URL-safe, time-ordered."""
    return "w-" + uuid7().replace("-", "")[:20]
