"""UTC time, the one way CML Fleet reads and writes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def format_rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z` suffix (never `+00:00Z`, the reference's bug)."""
    moment = _require_aware(moment).astimezone(UTC)
    # isoformat, not strftime("%Y"): glibc writes the year 999 as "999", not "0999".
    text = moment.replace(tzinfo=None).isoformat(timespec="seconds")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def _require_aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone (UTC expected)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+01:00: a ValueError, so validation reports it as such.
        raise ValueError("timestamp is out of range in UTC") from None


UtcDateTime = Annotated[
    datetime,
    AfterValidator(_require_aware),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
"""A datetime that must be timezone-aware, is kept in UTC and is written as RFC 3339 `Z`."""
