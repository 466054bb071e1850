"""The running relay and its application: the hub, the bus, health, and the routes.

The stream endpoint is `relay/stream.py`; the replay policy `relay/replay.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Route

from cmlfleet.events.catalog import (
    SseShutdown,
)
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.timeutil import utc_now
from relay.auth import StreamAuthenticator
from relay.backoff import Backoff, retry
from relay.dashboard import DashboardFiles, dashboard_config
from relay.draining import EcsTaskWatch
from relay.frames import delivery, relay_event_frame
from relay.history import DynamoDbEventLog, EventRing
from relay.hub import Hub, Subscription
from relay.limits import (
    Allowance,
    BoundedExecutor,
    StreamCounts,
)
from relay.metrics import MetricsServer
from relay.observability import LatencyWindow, prometheus_text, tracer
from relay.replay import Replayer
from relay.settings import RelaySettings
from relay.sse import FrameError
from relay.stream import StreamEndpoint

logger = Logger(child=True)


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
        self.replayer = Replayer(settings, self.ring, event_log, self.hub.stats)
        # What one client may cost (relay/limits.py).
        self.principal_streams = StreamCounts(settings.relay_streams_per_principal)
        self.address_streams = StreamCounts(settings.relay_streams_per_address)
        self.connects = Allowance(
            settings.relay_connects_per_address_per_minute,
            settings.relay_connect_burst_per_address,
        )
        self.refusals_held: Counter[str] = Counter()  # per address (relay/stream.py)
        threads = settings.relay_auth_threads
        self.executors = {  # by credential kind, each its own (relay/auth.py)
            "ticket": BoundedExecutor("relay-tickets", threads, 16 * threads),
            "token": BoundedExecutor("relay-tokens", threads, 16 * threads),
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

    @property
    def event_log(self) -> DynamoDbEventLog | None:
        return self.replayer.event_log

    @event_log.setter
    def event_log(self, event_log: DynamoDbEventLog | None) -> None:
        self.replayer.event_log = event_log

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.to_thread(self.bus.close)
        for executor in [*self.executors.values(), self.replayer.executor]:
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
            latencies={"broadcast": self.broadcast_latency, "replay": self.replayer.latency},
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
