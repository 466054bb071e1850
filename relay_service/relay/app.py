"""The relay's HTTP side: the SSE stream endpoint and health, wired to the hub and the bus."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cmlfleet.events.catalog import (
    AuthExpired,
    Connected,
    Heartbeat,
    ReplayOutcome,
    Resync,
    SseShutdown,
)
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.identity import AuthenticationError, Principal
from cmlfleet.timeutil import utc_now
from relay.auth import StreamAuthenticator
from relay.backoff import Backoff, retry
from relay.dashboard import DashboardFiles, dashboard_config
from relay.draining import EcsTaskWatch
from relay.frames import delivery, receives, relay_event_frame
from relay.history import DynamoDbEventLog, EventRing, Replay, TooManyMissedError
from relay.hub import Hub, Interest, Subscription, SubscriptionClosedError
from relay.limits import (
    Allowance,
    BoundedExecutor,
    BusyError,
    StreamCounts,
    client_address,
)
from relay.metrics import MetricsServer
from relay.observability import LatencyWindow, prometheus_text, tracer
from relay.response import EventStreamResponse
from relay.settings import RelaySettings
from relay.sse import FrameError

logger = Logger(child=True)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REPLAY_SLICE = 100  # frames framed and sent between turns of the event loop
NOT_KEPT = "the events after your last one are no longer kept"


class EventBus(Protocol):
    # `open` is retried after it raises (Relay.start), so a second call must finish what
    # the first began rather than make it again; `close` must cope with a half-open bus.
    def open(self) -> None: ...
    def start(self, sink: Any) -> None: ...
    def close(self) -> None: ...
    def seconds_since_receive(self) -> float | None: ...


class Relay:
    """The running relay: the hub, the bus feeding it, and the shutdown sequence."""

    def __init__(
        self,
        settings: RelaySettings,
        bus: EventBus,
        event_log: DynamoDbEventLog | None = None,
        *,
        bus_backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self._bus_backoff = bus_backoff or Backoff(settings.relay_bus_open_seconds)
        self.hub = Hub(
            settings.relay_client_buffer,
            settings.relay_metrics_window_ms / 1000,
            settings.relay_client_buffer_bytes,
        )
        self.ring = EventRing(settings.relay_ring_size)
        self.broadcast_latency = LatencyWindow()
        self.replay_latency = LatencyWindow()
        self.event_log = event_log
        # What one client may cost (relay/limits.py).
        self.principal_streams = StreamCounts(settings.relay_streams_per_principal)
        self.address_streams = StreamCounts(settings.relay_streams_per_address)
        self.replays = Allowance(settings.relay_replays_per_minute)
        self.connects = Allowance(
            settings.relay_connects_per_address_per_minute,
            settings.relay_connect_burst_per_address,
        )
        auth_threads = settings.relay_auth_threads
        self.executors = {
            "ticket": BoundedExecutor("relay-tickets", auth_threads, 16 * auth_threads),
            "token": BoundedExecutor("relay-tokens", auth_threads, 16 * auth_threads),
            "replay": BoundedExecutor(
                "relay-replay", settings.relay_replay_threads, 8 * settings.relay_replay_threads
            ),
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the bus (retried), warm the ring, start polling and watching for draining."""
        self._loop = asyncio.get_running_loop()
        await self._open_bus()
        await self._warm_ring()
        self.bus.start(self._from_bus_thread)
        uri = self.settings.ecs_container_metadata_uri_v4
        if uri:
            watch = EcsTaskWatch(
                uri, self.begin_shutdown, poll_seconds=self.settings.relay_drain_poll_seconds
            )
            self._watch = asyncio.create_task(watch.run(), name="relay-ecs-draining")

    async def _open_bus(self) -> None:
        try:
            await retry(
                lambda: asyncio.to_thread(self.bus.open),
                backoff=self._bus_backoff,
                what="opening the relay queue",
                abandon=self._stopping,
            )
        except Exception:
            # Whatever the attempts created (the queue, say) goes now rather than at the
            # reaper's next pass; the task is about to exit.
            await asyncio.to_thread(self.bus.close)
            raise

    async def _warm_ring(self) -> None:
        """A restarted relay knows the recent past, so its clients' cursors are found."""
        if self.event_log is None:
            return
        try:
            recent = await asyncio.to_thread(
                self.event_log.latest, utc_now(), min(self.settings.relay_ring_size, 2000)
            )
        except Exception:
            logger.exception("could not warm the replay ring from the event log")
            return
        for event in recent:
            self.ring.add(event)
        logger.info("replay ring warmed", events=len(recent))

    async def replay(self, cursor: str | None, subscription: Subscription) -> Replay:
        """What this client missed since `cursor` and may receive, or why it must resync.

        At most `RELAY_REPLAY_MAX` events are read, from the ring or the event log, and
        only those the client receives are returned. A cursor the client could not have
        been sent is answered as one that was never kept, so ids tell nothing of others.
        """
        if not cursor:
            return Replay("none", [])
        if not self.replays.take(_key(subscription.principal)):
            self.hub.stats["replays_refused_rate"] += 1
            return Replay("resync", [], "too many reconnects with a cursor; fetch the state")
        with tracer.start_as_current_span("relay.replay") as span:
            started = time.perf_counter()
            try:
                replay = await self._replay(cursor, lambda event: receives(subscription, event))
            except TooManyMissedError:
                self.hub.stats["replays_over_cap"] += 1
                replay = Replay("resync", [], "more events were missed than are replayed")
            except BusyError:
                self.hub.stats["replays_refused_busy"] += 1
                replay = Replay("resync", [], "the relay is busy; fetch the state")
            self.replay_latency.add(time.perf_counter() - started)
            span.set_attribute("cmlfleet.replay.status", replay.status)
            span.set_attribute("cmlfleet.replay.events", len(replay.events))
            return replay

    async def _replay(self, cursor: str, receives: Callable[[CloudEvent], bool]) -> Replay:
        cap = self.settings.relay_replay_max
        last_seen = self.ring.get(cursor)
        if last_seen is not None:
            missed = self.ring.after(cursor, cap) if receives(last_seen) else None
            if missed is not None:
                self.hub.stats["replay_ring_hits"] += 1
                return Replay("replayed", [event for event in missed if receives(event)])
        elif self.event_log is not None:
            event_log, now = self.event_log, utc_now()
            try:
                logged = await self.executors["replay"].run(
                    lambda: event_log.after(cursor, now, admit_cursor=receives)
                )
            except (TooManyMissedError, BusyError):
                raise
            except Exception:
                logger.exception("event log unavailable for replay")
                logged = None
            if logged is not None:
                self.hub.stats["replay_log_hits"] += 1
                return Replay("replayed", [event for event in logged if receives(event)])
        self.hub.stats["replay_misses"] += 1
        return Replay("resync", [], NOT_KEPT)

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.to_thread(self.bus.close)
        for executor in self.executors.values():
            executor.shutdown()

    def begin_shutdown(self) -> None:
        """Stop accepting clients and tell each to come back after its own jittered delay.

        Called by SIGTERM, by the ECS draining watch, and at stop; only the first acts.
        """
        self._stopping.set()
        if self.hub.accepting:
            self.hub.shut_down(self._shutdown_frame)

    def begin_shutdown_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.begin_shutdown)

    def metrics_text(self) -> str:
        """Counters, gauges and latencies in the Prometheus text format."""
        hub = self.hub
        depths = hub.queue_depths()
        quiet = self.bus.seconds_since_receive()
        return prometheus_text(
            counters=dict(hub.stats),
            gauges={
                "clients": hub.client_count,
                "client_queue_depth_max": max(depths, default=0),
                "client_queue_depth_total": sum(depths),
                "ring_events": len(self.ring),
                "seconds_since_bus_receive": -1 if quiet is None else quiet,
                "accepting": 1 if hub.accepting else 0,
            },
            latencies={"broadcast": self.broadcast_latency, "replay": self.replay_latency},
        )

    def publish(self, events: list[CloudEvent]) -> None:
        with tracer.start_as_current_span("relay.broadcast") as span:
            span.set_attribute("cmlfleet.events", len(events))
            span.set_attribute("cmlfleet.clients", self.hub.client_count)
            started = time.perf_counter()
            self._publish(events)
            self.broadcast_latency.add(time.perf_counter() - started)

    def _publish(self, events: list[CloudEvent]) -> None:
        for event in events:
            if not self.ring.add(event):
                self.hub.stats["duplicates_dropped"] += 1  # SNS and SQS deliver at least once
                continue
            try:
                frame = delivery(event)
            except FrameError:
                # The envelope validates ids, so this is a bug upstream; one bad event
                # must not take the rest of its batch down with it.
                logger.exception("event cannot be framed; skipped", event_id=repr(event.id))
                self.hub.stats["events_unframeable"] += 1
                continue
            self.hub.deliver(frame)

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


def create_app(
    settings: RelaySettings,
    bus: EventBus,
    event_log: DynamoDbEventLog | None,
    authenticator: StreamAuthenticator,
) -> FastAPI:
    """The relay application; `bus` is the SQS bus in production, anything alike in tests.

    There is no default `authenticator`: who may connect is always the caller's decision.

    Its lifespan also runs the metrics server (`app.state.metrics`, on
    `RELAY_METRICS_PORT`): up before the bus opens, down after the queue is deleted.
    """
    relay = Relay(settings, bus, event_log)
    metrics = MetricsServer(relay.metrics_text, settings.relay_host, settings.relay_metrics_port)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await metrics.start()
        try:
            await relay.start()
            try:
                yield
            finally:
                await relay.stop()
        finally:
            await metrics.stop()

    app = FastAPI(title="CML Fleet relay", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.relay = relay
    app.state.metrics = metrics

    # A plain ASGI endpoint, not a FastAPI route: every stream lives for hours, and the
    # framework's per-request machinery (dependency scopes, exit stacks) held ~6 KiB per
    # connection for nothing (BENCHMARKS.md, memory per idle connection).
    app.router.routes.insert(
        0, Route("/api/events/stream", StreamEndpoint(relay, authenticator), methods=["GET"])
    )

    @app.get("/api/events/live")
    async def live() -> JSONResponse:
        """200 while the process serves requests: the container health check.

        Nothing else is checked, on purpose: a regional SQS blip fails every task's bus
        check at once, and ECS replacing all of them would not bring SQS back.
        """
        return JSONResponse({"status": "alive"})

    @app.get("/api/events/health")
    async def health() -> JSONResponse:
        """200 while this relay accepts clients and hears from its queue, else 503.

        The load balancer's check: a draining or deaf task gets no new streams. It is
        public (the balancer sends no credentials), so it says nothing but the status;
        the counters are on the metrics port, which the balancer does not reach.
        """
        quiet = relay.bus.seconds_since_receive()
        # A poll returns at least every RELAY_POLL_WAIT_SECONDS; several missed means
        # the bus is broken (queue deleted, no permission) and this task should go.
        bus_ok = quiet is not None and quiet <= 3 * settings.relay_poll_wait_seconds + 15
        status = "draining" if not relay.hub.accepting else ("ok" if bus_ok else "bus_unavailable")
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/config.json", include_in_schema=False)
    async def config() -> JSONResponse:
        """The dashboard's sign-in settings (public values)."""
        return JSONResponse(dashboard_config(settings), headers={"Cache-Control": "no-cache"})

    if settings.dashboard_dir is not None:
        # Last: every path the routes above do not claim is a dashboard file (or 404).
        app.mount("/", DashboardFiles(settings.dashboard_dir, settings), name="dashboard")
    return app


class StreamEndpoint:
    """`GET /api/events/stream`: authenticate, admit, register, replay, then live events.

    `Last-Event-ID` (sent by EventSource when it reconnects), or `last_event_id` for a
    first connect, replays what the client missed before live events follow.
    """

    def __init__(self, relay: Relay, authenticator: StreamAuthenticator) -> None:
        self._relay, self._authenticator = relay, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        address = client_address(
            scope.get("client"),
            _header(scope, b"x-forwarded-for"),
            relay.settings.relay_forwarded_hops,
        )
        if not relay.connects.take(address):
            # Refused before anything is built for the request: a client reconnecting in a
            # loop (ignoring Retry-After) should cost as little as an answer can.
            relay.hub.stats["rejected_connect_rate"] += 1
            await send(TOO_MANY_CONNECTS_START)
            await send(TOO_MANY_CONNECTS_BODY)
            return
        admitted: list[Callable[[], None]] = []
        try:
            response = await self._respond(Request(scope, receive), address, admitted)
            await response(scope, receive, send)
        finally:
            # Here and not in the frames' generator: a response cancelled before its
            # first frame never runs the generator, and its stream must still be let go.
            for release in reversed(admitted):
                release()

    async def _respond(
        self, request: Request, address: str, admitted: list[Callable[[], None]]
    ) -> Response:
        relay, settings = self._relay, self._relay.settings
        if not relay.hub.accepting:
            return _refusal(503, "shutting_down", "relay is shutting down", retry_after=1)
        try:
            principal = await self._principal(request)
        except AuthenticationError as error:
            relay.hub.stats["rejected_unauthenticated"] += 1
            return JSONResponse(
                {"error": {"code": "unauthorized", "message": error.reason}},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        except BusyError:
            relay.hub.stats["rejected_busy"] += 1
            return _refusal(503, "busy", "the relay is busy; try again shortly", retry_after=2)
        refusal = self._admit(_key(principal), address, admitted)
        if refusal is not None:
            return refusal
        cursor = (
            request.headers.get("last-event-id") or request.query_params.get("last_event_id") or ""
        ).strip()[:128]
        interest = Interest(
            worker_ids=_listed(request.query_params.get("worker_ids")),
            event_types=_listed(request.query_params.get("event_types")),
        )
        # Registered for live events before history is read: nothing falls in the gap.
        subscription = relay.hub.subscribe(principal, interest)
        admitted.append(lambda: relay.hub.unsubscribe(subscription))
        return EventStreamResponse(
            _frames(relay, subscription, cursor or None),
            headers=STREAM_HEADERS,
            send_timeout=settings.relay_send_timeout_seconds,
            on_send_timeout=lambda: relay.hub.stats.update(["cutoffs_send_timeout"]),
        )

    async def _principal(self, request: Request) -> Principal:
        """Who this is: a malformed credential is refused here, on the loop; checking a
        good-looking one blocks (DynamoDB, key fetches), on the executor of its kind."""
        authenticator = self._authenticator
        credential = authenticator.credential(
            request.query_params.get("ticket"), request.headers.get("authorization")
        )
        if credential.kind == "anonymous":
            return authenticator.principal(credential)
        executor = self._relay.executors[credential.kind]
        return await executor.run(lambda: authenticator.principal(credential))

    def _admit(
        self, principal_key: str, address: str, admitted: list[Callable[[], None]]
    ) -> Response | None:
        """Count the stream against its principal and address, or refuse it (429)."""
        relay = self._relay
        if not relay.principal_streams.admit(principal_key):
            relay.hub.stats["rejected_streams_per_principal"] += 1
            return _refusal(429, "too_many_streams", "too many open streams for this user")
        admitted.append(lambda: relay.principal_streams.release(principal_key))
        if not relay.address_streams.admit(address):
            relay.hub.stats["rejected_streams_per_address"] += 1
            return _refusal(429, "too_many_streams", "too many open streams from this address")
        admitted.append(lambda: relay.address_streams.release(address))
        return None


_TOO_MANY_CONNECTS = b'{"error":{"code":"too_many_connects","message":"reconnecting too often"}}'
TOO_MANY_CONNECTS_START = {
    "type": "http.response.start",
    "status": 429,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_TOO_MANY_CONNECTS)).encode()),
        (b"retry-after", b"5"),
    ],
}
TOO_MANY_CONNECTS_BODY = {"type": "http.response.body", "body": _TOO_MANY_CONNECTS}


def _header(scope: Scope, name: bytes) -> str:
    """One request header from the raw ASGI scope (the last if repeated), or ""."""
    value = b""
    for key, item in scope.get("headers", ()):
        if key == name:
            value = item
    return value.decode("latin-1")


def _refusal(status: int, code: str, message: str, *, retry_after: int = 30) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"Retry-After": str(retry_after)},
    )


def _key(principal: Principal | None) -> str:
    """Whose stream or replay this is, for the limits: the `sub`, which is never reused."""
    return principal.subject if principal is not None else "anonymous"


def _listed(value: str | None) -> frozenset[str]:
    """A comma-separated query parameter as a set (bounded: it is the client's input)."""
    if not value:
        return frozenset()
    return frozenset(item.strip()[:128] for item in value.split(",")[:500] if item.strip())


async def _frames(
    relay: Relay, subscription: Subscription, cursor: str | None
) -> AsyncIterator[bytes]:
    settings = relay.settings
    try:
        replay = await relay.replay(cursor, subscription)
        subscription.skip({event.id for event in replay.events})
        yield relay_event_frame(
            Connected(
                client_id=subscription.client_id,
                server_time=utc_now(),
                heartbeat_seconds=settings.heartbeat_seconds,
                # What this client is sent, and nothing about what it is not.
                replay=ReplayOutcome(
                    requested=cursor, status=replay.status, replayed=len(replay.events)
                ),
            ),
            retry_ms=settings.relay_retry_ms,
        )
        if replay.status == "resync":
            yield relay_event_frame(Resync(reason=replay.reason))
        async for frames in _replayed(subscription, replay.events):
            yield frames
        async for frames in _live(relay, subscription):
            yield frames
    finally:
        relay.hub.unsubscribe(subscription)


async def _replayed(subscription: Subscription, events: list[CloudEvent]) -> AsyncIterator[bytes]:
    """The replayed events, framed (masked) for this client exactly as live ones, a slice
    at a time with a turn of the event loop between, so other clients' writes go on."""
    for start in range(0, len(events), REPLAY_SLICE):
        framed = (subscription.frame_for(delivery(e)) for e in events[start : start + REPLAY_SLICE])
        chunk = b"".join(frame for frame in framed if frame is not None)
        if chunk:
            yield chunk
        await asyncio.sleep(0)


async def _live(relay: Relay, subscription: Subscription) -> AsyncIterator[bytes]:
    settings = relay.settings
    expires_at = subscription.principal.expires_at if subscription.principal else None
    while True:
        wait = settings.heartbeat_seconds
        if expires_at is not None:
            remaining = expires_at - time.time()
            if remaining <= 0:
                # The client gets a new ticket or token and resumes with its last id.
                relay.hub.stats["closed_auth_expired"] += 1
                yield relay_event_frame(AuthExpired())
                return
            wait = min(wait, remaining)
        try:
            frames = await subscription.next_frames(wait)
        except SubscriptionClosedError as closed:
            if closed.final_frame:
                yield closed.final_frame
            return
        if frames:
            yield b"".join(frames)
        elif expires_at is None or expires_at - time.time() > 0:
            yield relay_event_frame(Heartbeat(server_time=utc_now()))
