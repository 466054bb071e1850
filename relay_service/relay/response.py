"""The streaming response of the event stream, with a deadline on every write.

A client that stops reading fills the socket's buffers, and then a plain streaming
response waits in `send` forever: the hub may have cut the client off, but its stream is
stuck and keeps the connection (and shutdown) waiting. Here each write has a deadline;
a write that misses it abandons the response and the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Send


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        send_timeout: float,
        headers: Mapping[str, str] | None = None,
        on_send_timeout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, headers=headers)
        self._frames = content
        self._send_timeout = send_timeout
        self._on_send_timeout = on_send_timeout

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self._frames:
                message = {"type": "http.response.body", "body": chunk, "more_body": True}
                try:
                    await asyncio.wait_for(send(message), self._send_timeout)
                except TimeoutError:
                    if self._on_send_timeout:
                        self._on_send_timeout()
                    return  # the response stays incomplete: the server closes the connection
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                await aclose()
