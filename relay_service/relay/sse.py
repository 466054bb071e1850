"""Server-Sent Events framing, by the WHATWG rules.

`data` is split on every line break the spec recognises (CRLF, LF, CR), one `data:`
line each, so a payload can never start a new field; `id` and `event` may not contain
CR, LF or NUL at all (a payload that tries is a bug upstream, so it is refused loudly).
Text that UTF-8 cannot carry (a lone surrogate) is refused the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


class FrameError(ValueError):
    """A value that cannot be put in an SSE field without changing the stream's meaning."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One SSE frame; `encode()` gives its exact bytes, ending with the blank line."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry_ms: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is not None and _FORBIDDEN_IN_FIELD.search(value):
                raise FrameError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
        if self.retry_ms is not None and self.retry_ms < 0:
            raise FrameError("SSE retry must be a non-negative integer")

    def encode(self) -> bytes:
        lines: list[str] = []
        if self.comment is not None:
            lines.extend(": " + line for line in _LINE_BREAK.split(self.comment))
        if self.id is not None:
            lines.append("id: " + self.id)
        if self.event is not None:
            lines.append("event: " + self.event)
        if self.retry_ms is not None:
            lines.append(f"retry: {self.retry_ms}")
        if self.data is not None:
            lines.extend("data: " + line for line in _LINE_BREAK.split(self.data))
        try:
            return ("\n".join(lines) + "\n\n").encode("utf-8")
        except UnicodeEncodeError as error:
            # A lone surrogate: the relay skips such an event, as it does any FrameError.
            raise FrameError(f"SSE frame is not valid Unicode: {error.reason}") from None


def comment(text: str = "") -> bytes:
    """A comment frame: ignored by clients, keeps proxies from timing the stream out."""
    return ServerSentEvent(comment=text).encode()
