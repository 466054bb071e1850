"""Backpressure over real HTTP: the relay app under uvicorn (in a thread), fed directly.

The bus here is an in-memory stand-in so megabytes of frames can be pushed in quickly;
the HTTP side (uvicorn, sockets, the stream response) is the real one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn

from cmlfleet.events.catalog import WorkerMetricsUpdated, WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from cmlfleet.identity import Role
from devstack.stack import free_port
from relay.app import Relay, create_app
from relay.auth import StreamAuthenticator
from relay.settings import RelaySettings
from tests.integration.conftest import status_event
from tests.sse_client import SseStream


class InMemoryBus:
    def __init__(self) -> None:
        self.sink: Callable[[list[CloudEvent]], None] | None = None

    def open(self) -> None:
        pass

    def start(self, sink: Callable[[list[CloudEvent]], None]) -> None:
        self.sink = sink

    def close(self) -> None:
        pass

    def seconds_since_receive(self) -> float | None:
        return 0.0


class RelayThread:
    def __init__(self, authenticator: StreamAuthenticator | None = None, **settings: Any) -> None:
        self.bus = InMemoryBus()
        # Every test client connects from 127.0.0.1: its connect rate is not what is tested.
        settings.setdefault("relay_connects_per_address_per_minute", 1_000_000)
        if authenticator is None:
            # Every client is the one anonymous principal: per-user limits would bind.
            settings.setdefault("relay_streams_per_principal", 100_000)
            settings.setdefault("relay_replays_per_minute", 10_000)
        self.settings = RelaySettings(
            topic_arn="arn:aws:sns:us-east-1:123456789012:events",
            relay_anonymous_role=None if authenticator else "admin",
            table_name="workers" if authenticator else None,
            relay_host="127.0.0.1",
            relay_metrics_port=0,  # any free port; `metrics_url` says which
            **settings,
        )
        # Tests that are not about credentials let everyone in as an admin, saying so.
        authenticator = authenticator or StreamAuthenticator(
            verifier=None, tickets=None, anonymous_role=Role.ADMIN
        )
        self.app = create_app(self.settings, self.bus, None, authenticator)
        self.relay: Relay = self.app.state.relay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = ""  # known once started (the metrics port is picked then)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> RelayThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "relay did not start"
            time.sleep(0.02)
        self.metrics_url = f"http://127.0.0.1:{self.app.state.metrics.port}/metrics"
        return self

    def publish(self, events: list[CloudEvent]) -> None:
        assert self.bus.sink is not None
        self.bus.sink(events)

    def health(self) -> dict[str, Any]:
        """The public health status, with the hub's counters read in-process (they are
        served on the metrics port only)."""
        body: dict[str, Any] = httpx.get(f"{self.url}/api/events/health", timeout=5).json()
        hub = self.relay.hub
        return body | {"clients": hub.client_count, "stats": dict(hub.stats)}

    def wait_for_health(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            health = self.health()
            if predicate(health):
                return health
            assert time.monotonic() < deadline, health
            time.sleep(0.05)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        loop = self.relay._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.relay.begin_shutdown)
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def relay_thread() -> Iterator[Callable[..., RelayThread]]:
    started: list[RelayThread] = []

    def start(**settings: Any) -> RelayThread:
        relay = RelayThread(**settings).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def stalled_client(port: int) -> socket.socket:
    """A client that asks for the stream and then never reads a byte."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: relay\r\n\r\n")
    return stalled


def test_a_stalled_client_is_cut_off_while_a_healthy_one_keeps_receiving(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread(relay_client_buffer=4, relay_send_timeout_seconds=1.0)
    stalled = stalled_client(relay.port)
    try:
        with SseStream(f"{relay.url}/api/events/stream") as healthy:
            healthy.next()
            relay.wait_for_health(lambda h: h["clients"] == 2)
            sent = [
                status_event(version, reason="x" * 1_000_000) for version in range(2, 22)
            ]  # ~20 MB
            for event in sent:
                relay.publish([event])
                got = healthy.wait_for(lambda e: e.event == "worker.status.updated")
                assert got.id == event.id
            health = relay.wait_for_health(lambda h: h["clients"] == 1)
    finally:
        stalled.close()
    cutoffs = health["stats"].get("cutoffs_slow_client", 0)
    cutoffs += health["stats"].get("cutoffs_send_timeout", 0)
    assert cutoffs >= 1


def test_shutdown_is_not_held_up_by_a_stalled_client(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread(relay_client_buffer=1000, relay_send_timeout_seconds=1.0)
    stalled = stalled_client(relay.port)
    try:
        relay.wait_for_health(lambda h: h["clients"] == 1)
        relay.publish([status_event(version, reason="x" * 1_000_000) for version in range(2, 22)])
        started = time.monotonic()
        relay.stop()
        assert not relay.thread.is_alive()
        # The abandoned connection still holds unsent bytes, which only uvicorn's graceful
        # shutdown limit (5 s here) ends; what matters is that it ends, not the client.
        assert time.monotonic() - started < 10
    finally:
        stalled.close()


def test_an_event_that_cannot_be_framed_does_not_take_its_batch_down(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread()
    good = [status_event(2, reason="x" * 10), status_event(3, reason="x" * 10)]
    # Bypass validation to simulate a bug upstream: an id that would break the frame.
    bad = good[0].model_copy(update={"id": "forged\nevent: admin"})
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        relay.publish([good[0], bad, good[1]])
        got = stream.collect(2, event_type="worker.status.updated")
    assert [e.id for e in got] == [e.id for e in good]
    assert relay.health()["stats"]["events_unframeable"] == 1


def test_the_health_check_fails_when_the_bus_has_been_silent_too_long(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread(relay_poll_wait_seconds=1)
    relay.bus.seconds_since_receive = lambda: 60.0  # type: ignore[method-assign]
    response = httpx.get(f"{relay.url}/api/events/health", timeout=5)
    assert response.status_code == 503
    assert response.json()["status"] == "bus_unavailable"


def test_a_client_that_comes_back_with_its_last_id_gets_exactly_what_it_missed(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread()
    sent = [status_event(v) for v in range(2, 8)]
    with SseStream(f"{relay.url}/api/events/stream") as first:
        assert first.next().event == "connected"
        relay.publish(sent[:2])
        seen = first.collect(2, event_type="worker.status.updated")
    last = seen[-1].id
    relay.publish(sent[2:5])  # missed while away
    with SseStream(f"{relay.url}/api/events/stream", headers={"Last-Event-ID": str(last)}) as back:
        connected = back.next()
        assert connected.json()["replay"] == {
            "requested": last,
            "status": "replayed",
            "replayed": 3,
        }
        relay.publish(sent[5:])  # live, after the replay
        got = back.collect(4, event_type="worker.status.updated")
    assert [e.id for e in got] == [e.id for e in sent[2:]]


def test_an_unknown_cursor_gets_resync(relay_thread: Callable[..., RelayThread]) -> None:
    relay = relay_thread()
    with SseStream(f"{relay.url}/api/events/stream?last_event_id=nope") as stream:
        connected = stream.next()
        assert connected.json()["replay"]["status"] == "resync"
        assert stream.next().event == "resync"


def test_a_duplicate_delivery_from_the_bus_reaches_clients_once(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread()
    event, after = status_event(2), status_event(3)
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        relay.publish([event, event])
        relay.publish([after])
        got = stream.collect(2, event_type="worker.status.updated")
    assert [e.id for e in got] == [event.id, after.id]
    assert relay.health()["stats"]["duplicates_dropped"] == 1


def metrics_event(worker_id: str, cpu: float) -> CloudEvent:
    payload = WorkerMetricsUpdated(
        worker_id=worker_id, cpu_utilization=cpu, collected_at=datetime.now(UTC)
    )
    return make_event(payload, worker_id=worker_id, version=2, owner="alice")


def test_metrics_of_many_workers_reach_a_client_as_one_batch_frame(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread(relay_metrics_window_ms=300)
    sent = [metrics_event(f"w-{index}", 10.0 + index) for index in range(5)]
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        relay.publish(sent)
        batch = stream.wait_for(lambda e: e.event == "worker.metrics.batch")
    events = batch.json()["events"]
    assert [e["id"] for e in events] == [e.id for e in sent]
    assert batch.id == sent[-1].id  # the cursor moves to the newest event in the batch
    assert events[2]["data"]["cpu_utilization"] == 12.0


def test_the_metrics_endpoint_reports_clients_deliveries_cutoffs_and_latencies(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread()
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        relay.publish([status_event(2), status_event(3)])
        stream.collect(2, event_type="worker.status.updated")
        text = httpx.get(relay.metrics_url, timeout=5).text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples["cmlfleet_relay_clients"] == "1"
    assert samples["cmlfleet_relay_deliveries_total"] == "2"
    assert samples["cmlfleet_relay_published_total"] == "2"
    assert int(samples["cmlfleet_relay_broadcast_seconds_count"]) >= 1
    assert float(samples['cmlfleet_relay_broadcast_seconds{quantile="0.99"}']) > 0
    assert "# TYPE cmlfleet_relay_client_queue_depth_max gauge" in text


def test_a_client_may_ask_for_some_workers_and_event_types_only(
    relay_thread: Callable[..., RelayThread],
) -> None:
    relay = relay_thread(relay_metrics_window_ms=0)
    wanted = status_event(2)  # worker w-1
    other_worker = make_event(
        WorkerStatusUpdated(
            worker_id="w-2",
            old_status="running",
            new_status="stopping",
            ec2_state=None,
            transition_started_at=None,
        ),
        worker_id="w-2",
        version=2,
        owner="alice",
    )
    other_type = metrics_event("w-1", 50.0)
    url = f"{relay.url}/api/events/stream?worker_ids=w-1,w-9&event_types=worker.status.updated"
    with SseStream(url) as stream:
        stream.next()
        relay.publish([other_worker, other_type, wanted])
        got = stream.wait_for(lambda e: e.event != "heartbeat")
    assert got.id == wanted.id
