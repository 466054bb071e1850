"""A small SSE client for tests: a WHATWG-style parser and a background HTTP reader."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None
    retry: int | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseParser:
    """Parses a text stream into events by the WHATWG rules (line ends, fields, dispatch)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""

    def feed(self, text: str) -> list[SseEvent]:
        self._buffer += text
        events: list[SseEvent] = []
        while True:
            match = _LINE.search(self._buffer)
            # A lone CR at the end may be the first half of CRLF: wait for more.
            if match is None or (match.group() == "\r" and match.end() == len(self._buffer)):
                return events
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event, event_id, retry = self._data, self._event, self._id, self._retry
        self._data, self._event, self._id, self._retry = [], "", None, None
        if not data:
            return None
        return SseEvent(event or "message", "\n".join(data), event_id, retry)


class SseStream:
    """Reads `url` on a thread; events land in a queue the test waits on with timeouts."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.events: queue.Queue[SseEvent] = queue.Queue()
        self.raw = bytearray()
        self.status_code: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.closed = threading.Event()
        self._connected = threading.Event()
        self._headers = headers or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> SseStream:
        self._thread.start()
        if not self._connected.wait(15):
            raise TimeoutError(f"no response from {self.url}")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _read(self) -> None:
        parser = SseParser()
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5, read=None)) as client,
                client.stream("GET", self.url, headers=self._headers) as response,
            ):
                self.status_code = response.status_code
                self.response_headers = response.headers
                self._connected.set()
                for chunk in response.iter_raw():
                    self.raw.extend(chunk)
                    for event in parser.feed(chunk.decode("utf-8")):
                        self.events.put(event)
                    if self._stop.is_set():
                        return
        except (httpx.HTTPError, OSError) as error:
            self.error = error
        finally:
            self._connected.set()
            self.closed.set()

    def next(self, timeout: float = 10) -> SseEvent:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event from {self.url} within {timeout} s") from None

    def wait_for(self, predicate: Callable[[SseEvent], bool], timeout: float = 20) -> SseEvent:
        """The first event matching `predicate`; the events skipped on the way are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event from {self.url} within {timeout} s")
            event = self.next(remaining)
            if predicate(event):
                return event

    def collect(self, count: int, *, event_type: str, timeout: float = 20) -> list[SseEvent]:
        return [self.wait_for(lambda e: e.event == event_type, timeout) for _ in range(count)]
