"""SSE clients: worker processes, each holding many raw-socket connections on one event loop.

A connection sends the GET, reads the response head, undoes chunked transfer encoding
(both servers use it; a naive line reader loses frames that straddle chunks), splits
frames on the blank line and, for a benchmark event, records receive time - send time
(both `time.time_ns()`, one machine). A connection counts as up once its first frame
(the relay's `connected`, or the origin's copy of it through Pushpin) has arrived.

The orchestrator drives the workers over `multiprocessing` pipes with small commands;
`ClientPool` is its side.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import time
from array import array
from collections import Counter
from typing import Any

from benchmarks.relaybench.common import MARK, die_with_parent, raise_nofile

MAX_HEAD = 65536


class HttpStatusError(Exception):
    pass


class Stream(asyncio.Protocol):
    """One SSE connection."""

    __slots__ = (
        "body",
        "buf",
        "chunk_left",
        "chunked",
        "count",
        "crlf_due",
        "head_done",
        "label",
        "last_seq",
        "ready",
        "request",
        "transport",
        "worker",
    )

    def __init__(
        self, worker: Worker, request: bytes, ready: asyncio.Future[None], label: int = -1
    ) -> None:
        self.worker = worker
        self.request = request
        self.label = label  # which of the `authorizations` it connected with (-1: none)
        self.ready: asyncio.Future[None] | None = ready
        self.transport: asyncio.Transport | None = None
        self.head_done = False
        self.chunked = False
        self.chunk_left = 0
        self.crlf_due = False
        self.buf = bytearray()
        self.body = bytearray()
        self.count = 0
        self.last_seq = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lost += 1
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before first frame: {exc}"))
        self.ready = None

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.head_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail("response head too large")
                return
            head = bytes(self.buf[:end]).decode("latin-1").lower()
            status = head.split(" ", 2)[1] if head.count(" ") >= 1 else "?"
            if status != "200":
                self._fail(f"HTTP {status}")
                return
            self.chunked = "transfer-encoding: chunked" in head
            self.head_done = True
            data = bytes(self.buf[end + 4 :])
            self.buf = bytearray()
        if self.chunked:
            self._dechunk(data)
        else:
            self.body += data
        self._frames(now)

    def _fail(self, reason: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(HttpStatusError(reason))
        if self.transport is not None:
            self.transport.abort()

    def _dechunk(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = self.body
        pos, size = 0, len(buf)
        while pos < size:
            if self.chunk_left:
                take = min(self.chunk_left, size - pos)
                out += buf[pos : pos + take]
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_due = True
            elif self.crlf_due:
                if size - pos < 2:
                    break
                pos += 2
                self.crlf_due = False
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                length = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:  # the server ended the stream
                    break
                self.chunk_left = length
        del buf[:pos]

    def _frames(self, now: int) -> None:
        body = self.body
        worker = self.worker
        start = 0
        while True:
            end = body.find(b"\n\n", start)
            if end < 0:
                break
            mark = body.find(MARK, start, end)
            if mark >= 0:
                fields = bytes(body[mark + 6 : mark + 80]).split(b":", 3)
                if int(fields[0]) == worker.phase:
                    seq, sent = int(fields[1]), int(fields[2])
                    self.count += 1
                    if seq <= self.last_seq:
                        worker.out_of_order += 1
                    self.last_seq = seq
                    worker.latencies.append(now - sent)
                    worker.total += 1
                    if not worker.first_ns:
                        worker.first_ns = now
                    worker.last_ns = now
            if self.ready is not None:
                if not self.ready.done():
                    self.ready.set_result(None)
                self.ready = None
            start = end + 2
        if start:
            del body[:start]


class Worker:
    """One client process: its connections and what they received in the current phase."""

    def __init__(self, index: int, pipe: multiprocessing.connection.Connection) -> None:
        self.index = index
        self.pipe = pipe
        self.streams: list[Stream] = []
        self.phase = 0
        self.latencies = array("q")
        self.total = 0
        self.first_ns = 0
        self.last_ns = 0
        self.out_of_order = 0
        self.lost = 0
        self.done: asyncio.Future[None] | None = None
        self.nofile = raise_nofile()

    async def serve(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.pipe.fileno(), self._on_pipe)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done, max_seconds)
        loop.remove_reader(self.pipe.fileno())
        self._close_all()

    def _on_pipe(self) -> None:
        for _ in range(100):
            try:
                if not self.pipe.poll():
                    return
                message = self.pipe.recv()
            except (EOFError, OSError):
                self._finish()
                return
            name, args = message
            if name == "connect":
                asyncio.get_running_loop().create_task(self._connect(**args))
            elif name == "exit":
                self._finish()
                return
            else:
                self.pipe.send(getattr(self, f"cmd_{name}")(**args))

    def _finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # --- commands ----------------------------------------------------------------------

    async def _connect(
        self,
        port: int,
        path: str,
        count: int,
        concurrency: int,
        rate: float,
        seconds_each: float,
        authorizations: list[str] | None = None,
        offset: int = 0,
        source_addresses: list[str] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
            "User-Agent: relaybench\r\n"
        )
        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        def request_for(k: int) -> tuple[bytes, int]:
            """Connection `k`'s request, with the next of `authorizations` in turn if any."""
            if not authorizations:
                return (head + "\r\n").encode(), -1
            label = (offset + k) % len(authorizations)
            return f"{head}Authorization: {authorizations[label]}\r\n\r\n".encode(), label

        def source_for(k: int) -> tuple[str, int] | None:
            """Connection `k`'s local address, the next of `source_addresses` in turn if any."""
            if not source_addresses:
                return None
            return source_addresses[(offset + k) % len(source_addresses)], 0

        async def one(k: int) -> None:
            async with gate:
                ready: asyncio.Future[None] = loop.create_future()
                request, label = request_for(k)
                stream = Stream(self, request, ready, label)
                try:
                    async with asyncio.timeout(seconds_each):
                        await loop.create_connection(
                            lambda: stream, "127.0.0.1", port, local_addr=source_for(k)
                        )
                        await ready
                except Exception as error:
                    reason = str(error) if isinstance(error, HttpStatusError) else None
                    if isinstance(error, OSError) and error.errno is not None:
                        reason = f"{type(error).__name__}: {os.strerror(error.errno)}"
                    outcomes[reason or type(error).__name__] += 1
                    if stream.transport is not None:
                        stream.transport.abort()
                    return
                outcomes["ok"] += 1
                self.streams.append(stream)

        tasks = []
        for k in range(count):
            delay = started + k / rate - time.monotonic() if rate > 0 else 0
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(k)))
        await asyncio.gather(*tasks)
        self.pipe.send(
            {
                "outcomes": dict(outcomes),
                "seconds": time.monotonic() - started,
                "open": self.open_count(),
                "nofile": self.nofile,
            }
        )

    def open_count(self) -> int:
        return sum(
            1 for s in self.streams if s.transport is not None and not s.transport.is_closing()
        )

    def cmd_phase(self, phase: int) -> dict[str, Any]:
        self.phase = phase
        self.latencies = array("q")
        self.total = self.first_ns = self.last_ns = self.out_of_order = 0
        for stream in self.streams:
            stream.count = 0
            stream.last_seq = -1
        return {"phase": phase}

    def cmd_progress(self) -> dict[str, Any]:
        return {"total": self.total, "open": self.open_count(), "last_ns": self.last_ns}

    def cmd_report(self, expected_per_conn: int) -> dict[str, Any]:
        counts = [s.count for s in self.streams]
        return {
            "total": self.total,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "out_of_order": self.out_of_order,
            "streams": len(self.streams),
            "open": self.open_count(),
            "complete": sum(1 for c in counts if c >= expected_per_conn),
            "min_count": min(counts, default=0),
            "by_label": self._counts_by_label(),
            "latencies": self.latencies.tobytes(),
        }

    def _counts_by_label(self) -> dict[int, list[int]]:
        """label → [streams, fewest frames one of them received, most]."""
        by_label: dict[int, list[int]] = {}
        for stream in self.streams:
            if stream.label >= 0:
                entry = by_label.setdefault(stream.label, [0, stream.count, stream.count])
                entry[0] += 1
                entry[1] = min(entry[1], stream.count)
                entry[2] = max(entry[2], stream.count)
        return by_label

    def cmd_close(self) -> dict[str, Any]:
        closed = self._close_all()
        return {"closed": closed}

    def _close_all(self) -> int:
        closed = 0
        for stream in self.streams:
            if stream.transport is not None and not stream.transport.is_closing():
                stream.transport.abort()  # RST: no TIME_WAIT pile-up across scenarios
                closed += 1
        self.streams = []
        return closed


def worker_main(
    index: int, pipe: multiprocessing.connection.Connection, max_seconds: float
) -> None:
    die_with_parent()
    worker = Worker(index, pipe)
    asyncio.run(worker.serve(max_seconds))


class ClientPool:
    """The orchestrator's side: start workers, send them commands, gather their answers."""

    def __init__(self, workers: int, max_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for index in range(workers):
            mine, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main,
                args=(index, theirs, max_seconds),
                name=f"relaybench-client-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        self.connected = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def _gather(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        replies: list[Any] = [None] * len(self.pipes)
        for index, pipe in enumerate(self.pipes):
            left = deadline - time.monotonic()
            if left > 0 and pipe.poll(left):
                replies[index] = pipe.recv()
            else:
                raise TimeoutError(f"client worker {index} did not answer in {timeout:.0f} s")
        return replies

    def call(self, name: str, timeout: float = 30.0, **args: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((name, args))
        return self._gather(timeout)

    def connect(
        self,
        port: int,
        path: str,
        total: int,
        *,
        concurrency: int,
        rate: float,
        timeout: float,
        authorizations: list[str] | None = None,
        source_addresses: list[str] | None = None,
    ) -> dict[str, Any]:
        """Open `total` more connections, spread over the workers; what happened to them.

        With `authorizations` (`Authorization` header values), connection k of the `total`
        sends the (k mod n)th, and its stream is labelled with that index in `report`.
        With `source_addresses` (loopback addresses: Linux routes all of 127.0.0.0/8 to
        `lo`), connection k's socket is bound to the (k mod m)th before it connects, so
        the server sees it come from there.
        """
        shares = [total // len(self.pipes)] * len(self.pipes)
        for index in range(total % len(self.pipes)):
            shares[index] += 1
        offset = 0
        for pipe, share in zip(self.pipes, shares, strict=True):
            args: dict[str, Any] = {
                "port": port,
                "path": path,
                "count": share,
                "concurrency": concurrency,
                "rate": rate / len(self.pipes),
                "seconds_each": timeout,
            }
            if authorizations:
                args |= {"authorizations": authorizations}
            if source_addresses:
                args |= {"source_addresses": source_addresses}
            args["offset"] = offset
            offset += share
            pipe.send(("connect", args))
        budget = timeout + total / max(rate, 1.0) * 2 + 30
        replies = self._gather(budget)
        outcomes: Counter[str] = Counter()
        for reply in replies:
            outcomes.update(reply["outcomes"])
        self.connected = sum(r["open"] for r in replies)
        return {
            "outcomes": dict(outcomes),
            "seconds": max(r["seconds"] for r in replies),
            "open": self.connected,
            "nofile": [r["nofile"] for r in replies],
        }

    def phase(self, phase: int) -> None:
        self.call("phase", phase=phase)

    def progress(self) -> dict[str, int]:
        replies = self.call("progress", timeout=10)
        return {
            "total": sum(r["total"] for r in replies),
            "open": sum(r["open"] for r in replies),
            "last_ns": max(r["last_ns"] for r in replies),
        }

    def report(self, expected_per_conn: int) -> dict[str, Any]:
        replies = self.call("report", timeout=60, expected_per_conn=expected_per_conn)
        latencies = array("q")
        for reply in replies:
            latencies.frombytes(reply.pop("latencies"))
        firsts = [r["first_ns"] for r in replies if r["first_ns"]]
        by_label: dict[int, list[int]] = {}
        for reply in replies:
            for label, (streams, fewest, most) in reply["by_label"].items():
                entry = by_label.setdefault(int(label), [0, fewest, most])
                entry[0] += streams
                entry[1], entry[2] = min(entry[1], fewest), max(entry[2], most)
        return {
            "total": sum(r["total"] for r in replies),
            "first_ns": min(firsts, default=0),
            "last_ns": max(r["last_ns"] for r in replies),
            "out_of_order": sum(r["out_of_order"] for r in replies),
            "streams": sum(r["streams"] for r in replies),
            "open": sum(r["open"] for r in replies),
            "complete": sum(r["complete"] for r in replies),
            "min_count": min((r["min_count"] for r in replies), default=0),
            "by_label": by_label,
            "latencies_ns": latencies,
        }

    def close_all(self) -> int:
        closed: int = sum(r["closed"] for r in self.call("close", timeout=60))
        self.connected = 0
        return closed

    def shutdown(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
