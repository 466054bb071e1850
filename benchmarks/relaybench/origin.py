"""The trivial GRIP origin behind Pushpin: every stream request is held on one channel.

It answers `GET /api/events/stream` with `Grip-Hold: stream`, `Grip-Channel: events`, a
keep-alive as long as the relay's heartbeat, and a body holding the same `connected`
frame (and `retry:`) our relay sends first. Anything else gets 404. HTTP/1.1 keep-alive,
asyncio, one process. Usage: python -m benchmarks.relaybench.origin --port P
"""

from __future__ import annotations

import argparse
import asyncio

from benchmarks.relaybench.common import CHANNEL, LOOPBACK, STREAM_PATH, raise_nofile, watchdog

MAX_HEAD = 65536


def connected_frame(heartbeat_seconds: float, retry_ms: int) -> bytes:
    """The first frame our relay sends a client with no cursor, built by the relay's code."""
    from cmlfleet.events.catalog import Connected, ReplayOutcome
    from cmlfleet.timeutil import utc_now
    from relay.frames import relay_event_frame

    return relay_event_frame(
        Connected(
            client_id="0" * 32,
            server_time=utc_now(),
            heartbeat_seconds=heartbeat_seconds,
            replay=ReplayOutcome(requested=None, status="none", replayed=0),
        ),
        retry_ms=retry_ms,
    )


def responses(heartbeat_seconds: float, retry_ms: int) -> tuple[bytes, bytes]:
    body = connected_frame(heartbeat_seconds, retry_ms)
    hold = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n"
        "X-Accel-Buffering: no\r\n"
        "Grip-Hold: stream\r\n"
        f"Grip-Channel: {CHANNEL}\r\n"
        f"Grip-Keep-Alive: :\\n\\n; format=cstring; timeout={int(heartbeat_seconds)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    return hold, missing


class Origin(asyncio.Protocol):
    hold = b""
    missing = b""
    served = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        for _ in range(1000):  # pipelined requests, bounded
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = 0
            close = head.split("\r\n", 1)[0].endswith("HTTP/1.0")
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip() or 0)
                elif name.strip().lower() == "connection" and "close" in value.lower():
                    close = True
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            target = head.split(" ", 2)[1] if head.count(" ") >= 2 else ""
            path = target.split("?", 1)[0]
            Origin.served += 1
            self.transport.write(Origin.hold if path == STREAM_PATH else Origin.missing)
            if close:
                self.transport.close()
                return


async def serve(port: int, heartbeat_seconds: float, retry_ms: int) -> None:
    Origin.hold, Origin.missing = responses(heartbeat_seconds, retry_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Origin, LOOPBACK, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--heartbeat-seconds", type=float, default=30.0)
    parser.add_argument("--retry-ms", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=1800)
    args = parser.parse_args()
    raise_nofile()
    watchdog(args.max_seconds)
    asyncio.run(serve(args.port, args.heartbeat_seconds, args.retry_ms))


if __name__ == "__main__":
    main()
