"""The hostile client: one token reconnecting with old cursors, as fast as it can.

It runs in a process of its own, so its CPU is counted apart from the honest clients'
and it never shares their event loops. Each of its `connections` loops connects from
its own source address (a loopback address of its own, so the relay's per-address
limits see it apart from the honest clients), sends `GET /api/events/stream` with the
token and the next old cursor as `Last-Event-ID`, reads the response head and, on a
200, the `connected` frame's replay outcome (else the refusal's error code), then
resets the connection (RST: no TIME_WAIT pile-up) and goes again at once, whatever the
answer (a `Retry-After` is not honoured: it is hostile).

Answers are counted by status: "200 replayed", "200 resync", "429 too_many_connects",
"401 unauthorized", … and, without the detail, per status code.

The orchestrator drives it over a `multiprocessing` pipe: `attack` (cursors, how many
connections), `stop` (answers with what happened), `exit`. `HostileClient` is its side.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
import time
from collections import Counter
from typing import Any

from benchmarks.relaybench.common import LOOPBACK, STREAM_PATH, die_with_parent, percentile

# The `connected` frame's replay outcome: `"replay":{"requested":…,"status":…,"replayed":N}`.
REPLAY = re.compile(rb'"replay":\{[^}]*"status":"(\w+)"[^}]*"replayed":(\d+)')
# A refusal's body: `{"error":{"code":"too_many_connects",…}}`.
ERROR_CODE = re.compile(rb'"code":"(\w+)"')
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
MAX_READ = 1 << 20
ATTEMPT_SECONDS = 30.0


class Tally:
    """What the relay answered, overall and per cursor depth, and how long it took."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_depth: Counter[str] = Counter()
        self.answer_ms: list[float] = []
        self.replayed_claimed = 0
        self.started = time.monotonic()

    def add(self, depth: int, outcome: str, took: float, replayed: int) -> None:
        self.outcomes[outcome] += 1
        self.by_status[outcome.split(" ", 1)[0] if outcome[:1].isdigit() else "none"] += 1
        self.by_depth[f"{depth}: {outcome}"] += 1
        self.answer_ms.append(took * 1000)
        self.replayed_claimed += replayed

    def summary(self, in_flight: int) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        ordered = sorted(self.answer_ms)
        connects = len(ordered)
        return {
            "connects": connects,
            "seconds": round(seconds, 2),
            "connects_per_s": round(connects / seconds, 1) if seconds > 0 else None,
            "outcomes": dict(self.outcomes.most_common()),
            "by_status": dict(self.by_status.most_common()),
            "by_depth": dict(sorted(self.by_depth.items())),
            "replayed_claimed": self.replayed_claimed,
            "answer_ms": {
                "p50": _round(percentile(ordered, 0.50)),
                "p99": _round(percentile(ordered, 0.99)),
                "max": _round(ordered[-1] if ordered else None),
            },
            "in_flight_at_stop": in_flight,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def attempt(port: int, request: bytes, source: str) -> tuple[str, int]:
    """One connect from `source`: how the relay answered ("200 replayed", "200 resync",
    "429 too_many_connects", "401 unauthorized", …) and how many events it replayed."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    try:
        writer.write(request)
        received = b""
        while len(received) < MAX_READ:
            data = await reader.read(65536)
            if not data:
                return "closed before an answer", 0
            received += data
            head_end = received.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            status = received.split(b" ", 2)[1].decode("latin-1")
            if status != "200":
                code = refusal_code(received, head_end)
                if code is None:
                    continue  # the body is not all here yet
                return f"{status} {code}".rstrip(), 0
            match = REPLAY.search(received, head_end)
            if match:
                return f"200 {match[1].decode()}", int(match[2])
        return "no connected frame", 0
    finally:
        writer.transport.abort()


def refusal_code(received: bytes, head_end: int) -> str | None:
    """A refusal's error code ("" if it has none); None while its body is still coming."""
    body = received[head_end + 4 :]
    length = CONTENT_LENGTH.search(received, 0, head_end + 2)
    if length is not None and len(body) < int(length[1]):
        return None
    match = ERROR_CODE.search(body)
    return match[1].decode() if match else ""


class Attacker:
    """The process's side: the reconnect loops and their tally."""

    def __init__(
        self, pipe: multiprocessing.connection.Connection, port: int, token: str, source: str
    ) -> None:
        self.pipe, self.port, self.token, self.source = pipe, port, token, source
        self.tasks: list[asyncio.Task[None]] = []
        self.tally = Tally()
        self.busy = 0
        self.done: asyncio.Future[None] | None = None

    def request(self, cursor: str) -> bytes:
        return (
            f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {self.token}\r\n"
            f"Last-Event-ID: {cursor}\r\nUser-Agent: relaybench-hostile\r\n\r\n"
        ).encode()

    async def loop(self, slot: int, stride: int, cursors: list[tuple[int, str]]) -> None:
        requests = [(depth, self.request(cursor)) for depth, cursor in cursors]
        turn = slot
        while True:
            depth, request = requests[turn % len(requests)]
            turn += stride
            started = time.perf_counter()
            replayed, pause = 0, 0.0
            self.busy += 1
            try:
                async with asyncio.timeout(ATTEMPT_SECONDS):
                    outcome, replayed = await attempt(self.port, request, self.source)
            except TimeoutError:
                outcome = "timeout"
            except OSError as error:
                outcome, pause = f"error: {error.strerror or type(error).__name__}", 0.05
            finally:
                self.busy -= 1
            self.tally.add(depth, outcome, time.perf_counter() - started, replayed)
            if pause:  # refused or reset: do not spin on a relay that is not there
                await asyncio.sleep(pause)

    def attack(self, cursors: list[tuple[int, str]], connections: int) -> dict[str, Any]:
        self.tally = Tally()
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self.loop(slot, connections, cursors)) for slot in range(connections)
        ]
        return {"connections": connections}

    async def stop(self) -> dict[str, Any]:
        in_flight = self.busy
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []
        return self.tally.summary(in_flight)

    async def serve(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.pipe.fileno(), self._on_pipe)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done, max_seconds)
        loop.remove_reader(self.pipe.fileno())
        await self.stop()

    def _on_pipe(self) -> None:
        try:
            name, args = self.pipe.recv()
        except (EOFError, OSError):
            name, args = "exit", {}
        if name == "attack":
            self.pipe.send(self.attack(**args))
        elif name == "stop":
            asyncio.get_running_loop().create_task(self._answer_stop())
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def _answer_stop(self) -> None:
        self.pipe.send(await self.stop())


def hostile_main(
    pipe: multiprocessing.connection.Connection,
    port: int,
    token: str,
    source: str,
    max_seconds: float,
) -> None:
    die_with_parent()
    asyncio.run(Attacker(pipe, port, token, source).serve(max_seconds))


class HostileClient:
    """The orchestrator's side: start the process, start and stop its attack.

    `source`: the loopback address its connections come from (Linux routes all of
    127.0.0.0/8 to `lo`), one of its own.
    """

    def __init__(self, port: int, token: str, source: str, max_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe(duplex=True)
        self._process = context.Process(
            target=hostile_main,
            args=(theirs, port, token, source, max_seconds),
            name="relaybench-hostile",
            daemon=True,
        )
        self._process.start()
        theirs.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def attack(self, cursors: list[tuple[int, str]], connections: int) -> None:
        """Start reconnecting with `cursors` (depth, event id), in turn, on `connections`."""
        self._pipe.send(("attack", {"cursors": cursors, "connections": connections}))
        if not self._pipe.poll(30):
            raise TimeoutError("the hostile client did not start")
        self._pipe.recv()

    def stop(self) -> dict[str, Any]:
        """Stop reconnecting; what the relay answered since `attack`."""
        self._pipe.send(("stop", {}))
        if not self._pipe.poll(ATTEMPT_SECONDS + 30):
            raise TimeoutError("the hostile client did not stop")
        reply: dict[str, Any] = self._pipe.recv()
        return reply

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(("exit", {}))
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
