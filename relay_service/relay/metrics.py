"""The Prometheus endpoint, on a port of its own that no load balancer target group uses.

On the routed port the counters were hidden only by a listener rule matching one exact
path, which another spelling of it (`/api/events/%6detrics`) may slip past. Here there
is nothing to hide: the main app has no such route, and this server, in the same event
loop and reading the same relay, is reachable only from inside the task's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

METRICS_PATH = "/metrics"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_metrics_app(render: Callable[[], str]) -> Starlette:
    """`GET /metrics`: `render()` in the Prometheus text format; every other path 404."""

    async def metrics(_: Request) -> PlainTextResponse:
        return PlainTextResponse(render(), media_type=PROMETHEUS_TEXT)

    return Starlette(routes=[Route(METRICS_PATH, metrics, methods=["GET"])])


class MetricsServer:
    """Serves `create_metrics_app(render)` on `host:port` (0: any free port) until stopped."""

    def __init__(self, render: Callable[[], str], host: str, port: int) -> None:
        self._app = create_metrics_app(render)
        self._host, self._requested_port = host, port
        self._server: _SignalFreeServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind now (a taken port fails the relay's start), then serve in the background."""
        sock = _listening_socket(self._host, self._requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,  # the main server configured logging for the process
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _SignalFreeServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))

    async def stop(self) -> None:
        """Stop listening and wait (briefly) for a scrape in progress."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        if not self._task.done():
            self._task.cancel()


class _SignalFreeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM belongs to the main server (RelayServer), whose shutdown sequence ends
        # with this server's stop; taking the handlers here would skip that sequence.
        yield


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
