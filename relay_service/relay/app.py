"""The relay's HTTP side: the SSE stream endpoint and health, wired to the hub and the bus."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cmlfleet.events.catalog import Connected, Heartbeat, SseShutdown
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.timeutil import utc_now
from relay.frames import bus_event_frame, relay_event_frame
from relay.hub import Hub, Subscription, SubscriptionClosedError
from relay.settings import RelaySettings

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventBus(Protocol):
    def open(self) -> None: ...
    def start(self, sink: Any) -> None: ...
    def close(self) -> None: ...


class Relay:
    """The running relay: the hub, the bus feeding it, and the shutdown sequence."""

    def __init__(self, settings: RelaySettings, bus: EventBus) -> None:
        self.settings = settings
        self.bus = bus
        self.hub = Hub(settings.relay_client_buffer)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.bus.open)
        self.bus.start(self._from_bus_thread)

    async def stop(self) -> None:
        self.begin_shutdown()
        await asyncio.to_thread(self.bus.close)

    def begin_shutdown(self) -> None:
        """Stop accepting clients and tell each to come back after its own jittered delay."""
        if self.hub.accepting:
            self.hub.shut_down(self._shutdown_frame)

    def begin_shutdown_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.begin_shutdown)

    def publish(self, events: list[CloudEvent]) -> None:
        for event in events:
            self.hub.publish(bus_event_frame(event))

    def _from_bus_thread(self, events: list[CloudEvent]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.publish, events)

    def _shutdown_frame(self, _: Subscription) -> bytes:
        # Spread the reconnects so the clients of a stopping task do not stampede the rest.
        delay = random.randint(  # noqa: S311 - jitter, not a secret
            self.settings.relay_shutdown_min_ms, self.settings.relay_shutdown_max_ms
        )
        payload = SseShutdown(reason="relay stopping", reconnect_after_ms=delay)
        return relay_event_frame(payload, retry_ms=delay)


def create_app(settings: RelaySettings, bus: EventBus) -> FastAPI:
    """The relay application; `bus` is the SQS bus in production, anything alike in tests."""
    relay = Relay(settings, bus)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = FastAPI(title="CML Fleet relay", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.relay = relay

    @app.get("/api/events/stream", response_model=None)
    async def stream(request: Request) -> Response:
        """The live event stream (text/event-stream)."""
        if not relay.hub.accepting:
            return JSONResponse(
                {"error": "relay is shutting down"}, status_code=503, headers={"Retry-After": "1"}
            )
        subscription = relay.hub.subscribe()
        return StreamingResponse(
            _frames(relay, subscription),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )

    @app.get("/api/events/health")
    async def health() -> dict[str, Any]:
        """Whether this relay accepts clients, and what it has done so far."""
        hub = relay.hub
        return {
            "status": "ok" if hub.accepting else "draining",
            "clients": hub.client_count,
            "stats": dict(hub.stats),
        }

    return app


async def _frames(relay: Relay, subscription: Subscription) -> AsyncIterator[bytes]:
    settings = relay.settings
    try:
        yield relay_event_frame(
            Connected(
                client_id=subscription.client_id,
                server_time=utc_now(),
                heartbeat_seconds=settings.heartbeat_seconds,
            ),
            retry_ms=settings.relay_retry_ms,
        )
        while True:
            try:
                frames = await subscription.next_frames(settings.heartbeat_seconds)
            except SubscriptionClosedError as closed:
                if closed.final_frame:
                    yield closed.final_frame
                return
            if frames:
                yield b"".join(frames)
            else:
                yield relay_event_frame(Heartbeat(server_time=utc_now()))
    finally:
        relay.hub.unsubscribe(subscription)
