"""Properties of the SSE encoder: whatever it is given, it frames it faithfully or refuses.

A WHATWG parser (tests/sse_client.py) must read every frame back as the same event, and
no value, however hostile, may forge a field or a second event.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import tests.hypothesis_profiles  # noqa: F401 - loads the budget
from relay.sse import FrameError, ServerSentEvent, comment
from tests.sse_client import SseEvent, SseParser


def _has_lone_surrogate(value: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in value)


# Text biased towards what can break a line-based protocol, plus anything Unicode has
# (lone surrogates included: they cannot be written as UTF-8 at all).
HOSTILE = st.sampled_from(
    ["\r", "\n", "\r\n", "\x00", ":", " ", "data: x", "id: forged", "event: admin", "\ufeff"]
)
TEXT = st.lists(st.one_of(HOSTILE, st.text(max_size=8)), max_size=6).map("".join)
FIELD = st.one_of(st.none(), TEXT)
UTF8_TEXT = TEXT.filter(lambda text: not _has_lone_surrogate(text))
RETRY = st.one_of(st.none(), st.integers(min_value=-5, max_value=2**40))

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def refusable(event: str | None, id_: str | None, retry_ms: int | None, *texts: str | None) -> bool:
    """Whether the encoder must refuse these values rather than frame them."""
    if any(value is not None and re.search(r"[\r\n\x00]", value) for value in (event, id_)):
        return True
    if retry_ms is not None and retry_ms < 0:
        return True
    return any(value is not None and _has_lone_surrogate(value) for value in (event, id_, *texts))


def expected(
    data: str | None, event: str | None, id_: str | None, retry_ms: int | None
) -> list[SseEvent]:
    """What the WHATWG rules say a client reads: no data, no event; line breaks become LF."""
    if data is None:
        return []
    return [SseEvent(event or "message", _LINE_BREAK.sub("\n", data), id_, retry_ms)]


def encode(
    data: str | None, event: str | None, id_: str | None, retry_ms: int | None
) -> bytes | None:
    """The frame's bytes, or None when refused (with FrameError and nothing else)."""
    try:
        return ServerSentEvent(data=data, event=event, id=id_, retry_ms=retry_ms).encode()
    except FrameError:
        return None


@given(data=FIELD, event=FIELD, id_=FIELD, retry_ms=RETRY)
@example(data="\ud800", event="x", id_="1", retry_ms=None)
@example(data="x", event=None, id_="\udfff", retry_ms=None)
@example(data="a\r\n\r\nid: forged", event="e", id_="1", retry_ms=0)
def test_any_event_is_read_back_identically_or_refused(
    data: str | None, event: str | None, id_: str | None, retry_ms: int | None
) -> None:
    frame = encode(data, event, id_, retry_ms)

    if refusable(event, id_, retry_ms, data):
        assert frame is None
        return
    assert frame is not None
    assert frame.endswith(b"\n\n")
    assert SseParser().feed(frame.decode("utf-8")) == expected(data, event, id_, retry_ms)


@given(
    st.lists(st.tuples(FIELD, FIELD, FIELD, RETRY), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=7),
)
def test_a_stream_of_frames_reads_back_event_by_event_in_any_chunking(
    frames: list[tuple[str | None, str | None, str | None, int | None]], chunk: int
) -> None:
    stream, wanted = "", []
    for data, event, id_, retry_ms in frames:
        frame = encode(data, event, id_, retry_ms)
        if frame is not None:
            stream += frame.decode("utf-8")
            wanted += expected(data, event, id_, retry_ms)
    parser = SseParser()

    got = [e for i in range(0, len(stream), chunk) for e in parser.feed(stream[i : i + chunk])]

    assert got == wanted  # nothing forged, nothing merged, nothing lost


@given(text=TEXT, data=st.one_of(st.none(), UTF8_TEXT))
@example(text="\ud800", data="x")
def test_a_comment_never_becomes_an_event_and_never_leaks_into_the_next(
    text: str, data: str | None
) -> None:
    try:
        frame = comment(text)
    except FrameError:
        assert _has_lone_surrogate(text)
        return
    following = ServerSentEvent(data=data, event="next", id="2").encode()

    events = SseParser().feed((frame + following).decode("utf-8"))

    assert events == expected(data, "next", "2", None)


@given(value=TEXT)
@pytest.mark.parametrize("field", ["id", "event"])
def test_id_and_event_never_carry_a_line_break_or_nul_onto_the_wire(field: str, value: str) -> None:
    try:
        frame = ServerSentEvent(data="x", **{field: value}).encode()
    except FrameError:
        return

    assert frame.count(b"\n") == 3  # the field, data, the blank line
    assert b"\r" not in frame
    assert b"\x00" not in frame


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=5000) | UTF8_TEXT)
def test_data_of_any_size_stays_in_data_lines(data: str) -> None:
    frame = ServerSentEvent(data=data, event="e", id="1").encode()

    lines = frame.decode("utf-8").split("\n")

    assert lines[:2] == ["id: 1", "event: e"]
    assert lines[-2:] == ["", ""]
    assert all(line.startswith("data: ") for line in lines[2:-2])
    assert "\r" not in "".join(lines)
