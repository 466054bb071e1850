"""Fixtures with real servers: moto over HTTP and relay processes under uvicorn."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import IO, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cmlfleet.events.catalog import WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from devstack.relayproc import RelayProcess
from devstack.stack import LOCAL_ENVIRONMENT, free_port


class MotoEndpoint:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service, region_name="us-east-1", endpoint_url=self.url
        )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[MotoEndpoint]:
    """A moto server on loopback, reachable by child processes."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoEndpoint(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def topic_arn(moto_endpoint: MotoEndpoint, request: pytest.FixtureRequest) -> str:
    name = "events-" + request.node.name.replace("[", "-").replace("]", "")[:200]
    return str(moto_endpoint.client("sns").create_topic(Name=name[:256])["TopicArn"])


RelayFactory = Callable[..., RelayProcess]


def status_event(
    version: int = 2, *, worker_id: str = "w-1", reason: str | None = None, owner: str = "alice"
) -> CloudEvent:
    """A `worker.status.updated` on the bus (`reason` pads it to a size when needed)."""
    payload = WorkerStatusUpdated(
        worker_id=worker_id,
        old_status="running",
        new_status="stopping",
        ec2_state="stopping",
        transition_started_at=None,
        reason=reason,
    )
    return make_event(payload, worker_id=worker_id, version=version, owner=owner)


@pytest.fixture
def start_relay(moto_endpoint: MotoEndpoint, topic_arn: str) -> Iterator[RelayFactory]:
    """Starts relay processes on free ports; all are stopped at the end of the test.

    `output`, when given, receives the process's stdout and stderr (its logs); with
    `wait=False` the relay is returned before it answers (`wait_ready` it later).
    """
    started: list[RelayProcess] = []

    def start(output: IO[bytes] | None = None, wait: bool = True, **settings: str) -> RelayProcess:
        environment = {
            **LOCAL_ENVIRONMENT,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": moto_endpoint.url,
            "TOPIC_ARN": topic_arn,
            "RELAY_POLL_WAIT_SECONDS": "1",
            "HEARTBEAT_SECONDS": "30",
            "RELAY_ANONYMOUS_ROLE": "admin",  # these tests are about transport, not identity
            **settings,
        }
        relay = RelayProcess(environment, port=free_port(), output=output)
        started.append(relay)
        return relay.start(30.0 if wait else None)

    yield start
    for relay in started:
        relay.stop(timeout=15)


@pytest.fixture
def restore_environment() -> Iterator[None]:
    """Give back os.environ as it was (the local stack points boto3 at its moto server)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
