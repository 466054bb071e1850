"""Draining on ECS: when the task metadata says the task is stopping, the relay says goodbye.

A local HTTP server stands in for `${ECS_CONTAINER_METADATA_URI_V4}/task`; the relay is a
real `python -m relay` process (or, for the watch alone, `EcsTaskWatch` in this process).
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from devstack.issuer import DevelopmentIssuer
from relay.draining import EcsTaskWatch
from tests.integration.conftest import RelayFactory
from tests.sse_client import SseStream

TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/relays/0123456789abcdef0123456789abcdef"
ISSUER = "https://issuer.test/pool"
AUDIENCE = "cmlfleet-tests"
# On ECS a relay never lets anyone in without credentials, so these clients bring a token.
TOKENS = DevelopmentIssuer(ISSUER, audience=AUDIENCE)


class TaskMetadata:
    """What the ECS agent would answer at `/v4/<id>/task`, and how often it was asked."""

    def __init__(self) -> None:
        self.desired_status = "RUNNING"
        self.broken = False  # answer 500 with a non-JSON body
        self.requests = 0
        self._asked = threading.Condition()
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks.json":  # the issuer's keys, from the same server
                    body, status = json.dumps(TOKENS.jwks()).encode(), 200
                elif self.path != "/v4/abc-123/task":
                    self.send_error(404)
                    return
                else:
                    body, status = metadata.answer()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.uri = f"{base}/v4/abc-123"
        self.identity = {
            "RELAY_ANONYMOUS_ROLE": "",
            "OIDC_ISSUER": ISSUER,
            "OIDC_AUDIENCE": AUDIENCE,
            "OIDC_JWKS_URL": f"{base}/jwks.json",
        }
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self) -> tuple[bytes, int]:
        with self._asked:
            self.requests += 1
            self._asked.notify_all()
        if self.broken:
            return b"<html>agent unavailable</html>", 500
        task = {
            "TaskARN": TASK_ARN,
            "DesiredStatus": self.desired_status,
            "KnownStatus": "RUNNING",
        }
        return json.dumps(task).encode(), 200

    def wait_for_requests(self, count: int, timeout: float = 20) -> None:
        with self._asked:
            reached = self._asked.wait_for(lambda: self.requests >= count, timeout)
        assert reached, f"asked {self.requests} times, expected {count}"

    def __enter__(self) -> TaskMetadata:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def metadata() -> Iterator[TaskMetadata]:
    with TaskMetadata() as endpoint:
        yield endpoint


def test_when_ecs_stops_the_task_clients_hear_goodbye_and_health_says_draining(
    start_relay: RelayFactory, metadata: TaskMetadata
) -> None:
    relay = start_relay(
        **metadata.identity,
        ECS_CONTAINER_METADATA_URI_V4=metadata.uri,
        RELAY_DRAIN_POLL_SECONDS="0.2",
        RELAY_SHUTDOWN_MIN_MS="700",
        RELAY_SHUTDOWN_MAX_MS="900",
    )
    with SseStream(f"{relay.url}/api/events/stream", headers=BEARER) as stream:
        assert stream.next().event == "connected"
        metadata.wait_for_requests(2)  # it is watching
        assert httpx.get(f"{relay.url}/api/events/health", timeout=5).status_code == 200

        metadata.desired_status = "STOPPED"  # ECS decided; deregistration begins
        goodbye = stream.wait_for(lambda e: e.event == "system.sse.shutdown", timeout=10)
        assert stream.closed.wait(10), "the stream ends after the goodbye"
    assert 700 <= goodbye.json()["reconnect_after_ms"] <= 900
    assert goodbye.retry == goodbye.json()["reconnect_after_ms"]

    # Still listening (SIGTERM has not come yet): the load balancer's check says draining,
    # the container's check says alive, and a new stream is turned away.
    health = httpx.get(f"{relay.url}/api/events/health", timeout=5)
    assert (health.status_code, health.json()["status"]) == (503, "draining")
    live = httpx.get(f"{relay.url}/api/events/live", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    refused = httpx.get(f"{relay.url}/api/events/stream", headers=BEARER, timeout=5)
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")

    # Then SIGTERM: the sequence already ran, and the relay exits cleanly.
    assert relay.process is not None
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(20) == 0


def test_a_metadata_endpoint_that_fails_is_logged_rarely_and_the_relay_serves_on(
    start_relay: RelayFactory, metadata: TaskMetadata
) -> None:
    metadata.broken = True
    with tempfile.TemporaryFile() as output:
        relay = start_relay(
            output=output,
            **metadata.identity,
            ECS_CONTAINER_METADATA_URI_V4=metadata.uri,
            RELAY_DRAIN_POLL_SECONDS="0.1",
        )
        metadata.wait_for_requests(10)
        assert httpx.get(f"{relay.url}/api/events/health", timeout=5).status_code == 200
        with SseStream(f"{relay.url}/api/events/stream", headers=BEARER) as stream:
            assert stream.next().event == "connected"

        metadata.broken = False  # the agent is back, and the watch still works
        metadata.desired_status = "STOPPED"
        wait_until(lambda: health_status(relay.url) == 503)
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        assert relay.process.wait(20) == 0
        output.seek(0)
        logs = output.read().decode()
    (failure,) = [line for line in logs.splitlines() if "ECS task metadata unavailable" in line]
    assert json.loads(failure)["error"].startswith("HTTPError: HTTP Error 500")
    assert "ECS is stopping this task; draining" in logs


BEARER = {"Authorization": f"Bearer {TOKENS.token('alice', 'admin', lifetime=3600)}"}


def health_status(url: str) -> int:
    return httpx.get(f"{url}/api/events/health", timeout=5).status_code


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_the_watch_calls_back_once_and_stops_polling_when_the_task_is_stopping(
    metadata: TaskMetadata,
) -> None:
    calls: list[str] = []

    async def watch() -> None:
        watcher = EcsTaskWatch(metadata.uri, lambda: calls.append("stop"), poll_seconds=0.05)
        task = asyncio.create_task(watcher.run())
        await asyncio.to_thread(metadata.wait_for_requests, 3)
        assert not task.done()
        metadata.desired_status = "STOPPED"
        await asyncio.wait_for(task, 10)  # run() returns: no more polling

    asyncio.run(watch())
    assert calls == ["stop"]


def test_the_watch_survives_an_unreachable_endpoint_and_counts_the_failures() -> None:
    async def watch() -> int:
        # Port 9 on loopback: nothing listens, every poll is refused.
        watcher = EcsTaskWatch("http://127.0.0.1:9/v4/x", lambda: None, poll_seconds=0.01)
        task = asyncio.create_task(watcher.run())
        while watcher.failures < 5:
            assert not task.done(), "the watch must not end on errors"
            await asyncio.sleep(0.01)
        task.cancel()
        return watcher.failures

    assert asyncio.run(asyncio.wait_for(watch(), 20)) >= 5


def test_the_watch_refuses_a_uri_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        EcsTaskWatch("file:///etc/passwd", lambda: None)
