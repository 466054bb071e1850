"""The whole path on real pieces: moto server, the stack from template.yaml, the relay
under uvicorn, and an SSE client over HTTP. An EC2 state change becomes a frame."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cmlfleet import bootstrap
from devstack.ec2events import put_state_change
from devstack.fleet import launch_instance, register_instance
from devstack.relayproc import RelayProcess
from devstack.stack import ACCOUNT_ID, LocalStack, free_port
from tests.sse_client import SseEvent, SseStream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    saved = dict(os.environ)
    bootstrap.reset()
    local = LocalStack(overrides={"POWERTOOLS_LOG_LEVEL": "WARNING"}).start()
    try:
        yield local
    finally:
        local.stop()
        os.environ.clear()
        os.environ.update(saved)
        bootstrap.reset()


@pytest.fixture(scope="module")
def relay(stack: LocalStack) -> Iterator[RelayProcess]:
    environment = stack.environment() | {
        "TOPIC_ARN": stack.outputs["DomainEventsTopicArn"],
        "RELAY_POLL_WAIT_SECONDS": "1",
    }
    process = RelayProcess(environment, port=free_port()).start()
    try:
        yield process
    finally:
        process.stop(timeout=15)


def test_an_ec2_state_change_reaches_the_browser_stream_as_a_status_update(
    stack: LocalStack, relay: RelayProcess
) -> None:
    instance = launch_instance(stack.client("ec2"), "e2e-worker", "carol")
    worker = register_instance(instance, "e2e-worker", "carol", stack.region)
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        assert stream.next().event == "connected"
        put_state_change(
            stack.client("events"),
            worker.instance_id,
            "stopping",
            region=stack.region,
            account=ACCOUNT_ID,
        )
        update = stream.wait_for(
            lambda e: (
                e.event == "worker.status.updated" and e.json()["worker_id"] == worker.worker_id
            ),
            timeout=30,
        )
    wire = update.json()
    assert update.id == wire["id"]
    assert wire["version"] == 2  # registered at 1, this change made it 2
    assert wire["data"]["old_status"] == "running"
    assert wire["data"]["new_status"] == "stopping"
    assert wire["data"]["ec2_state"] == "stopping"
    assert wire["data"]["transition_started_at"].endswith("Z")


def test_a_terminated_instance_yields_a_status_update_and_a_termination_in_order(
    stack: LocalStack, relay: RelayProcess
) -> None:
    events = stack.client("events")
    mine: list[tuple[str, str | None, int]] = []
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        instance = launch_instance(stack.client("ec2"), "e2e-doomed", "dave")
        worker = register_instance(instance, "e2e-doomed", "dave", stack.region)

        def is_mine(event: SseEvent) -> bool:
            return (
                event.event.startswith("worker.") and event.json()["worker_id"] == worker.worker_id
            )

        for state in ("shutting-down", "terminated"):
            put_state_change(
                events, worker.instance_id, state, region=stack.region, account=ACCOUNT_ID
            )
        for _ in range(4):
            event = stream.wait_for(is_mine, timeout=30)
            wire = event.json()
            mine.append((event.event, wire["data"].get("new_status"), wire["version"]))
    assert mine == [
        ("worker.created", None, 1),
        ("worker.status.updated", "terminating", 2),
        ("worker.status.updated", "terminated", 3),
        ("worker.terminated", None, 3),
    ]
    stored = bootstrap.worker_repository().get(worker.worker_id)
    assert stored is not None
    assert stored.status == "terminated"
    assert stored.version == 3
    assert stored.terminated_by == "ec2"


def test_events_for_instances_that_are_not_workers_are_ignored(
    stack: LocalStack, relay: RelayProcess
) -> None:
    stranger = launch_instance(stack.client("ec2"), "not-a-worker", "nobody")
    tracked = register_instance(
        launch_instance(stack.client("ec2"), "e2e-tracked", "erin"),
        "e2e-tracked",
        "erin",
        stack.region,
    )
    events = stack.client("events")
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        put_state_change(
            events, stranger["InstanceId"], "stopping", region=stack.region, account=ACCOUNT_ID
        )
        put_state_change(
            events, tracked.instance_id, "stopping", region=stack.region, account=ACCOUNT_ID
        )
        first = stream.wait_for(lambda e: e.event == "worker.status.updated", timeout=30)
    # Events are handled in order: had the stranger's produced anything, it would be first.
    assert first.json()["worker_id"] == tracked.worker_id
