"""The whole path on real pieces: moto server, the stack from template.yaml, the relay
under uvicorn, and an SSE client over HTTP. An EC2 state change becomes a frame."""

from __future__ import annotations

import os
import time
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


def relay_environment(stack: LocalStack) -> dict[str, str]:
    return stack.environment() | {
        "TOPIC_ARN": stack.outputs["DomainEventsTopicArn"],
        "TABLE_NAME": stack.outputs["WorkersTableName"],
        "RELAY_POLL_WAIT_SECONDS": "1",
        "RELAY_ANONYMOUS_ROLE": "admin",  # the EC2 path is under test here, not identity
        # The local stack puts the API's issuer in this process's environment, which the
        # relay inherits; with an issuer a relay refuses anonymous clients (L3).
        "OIDC_ISSUER": "",
        "OIDC_AUDIENCE": "",
    }


@pytest.fixture(scope="module")
def relay(stack: LocalStack) -> Iterator[RelayProcess]:
    process = RelayProcess(relay_environment(stack), port=free_port()).start()
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
        ("worker.terminated", None, 4),  # each event of a change has its own version
    ]
    stored = bootstrap.worker_repository().get(worker.worker_id)
    assert stored is not None
    assert stored.status == "terminated"
    assert stored.version == 4
    assert stored.terminated_by == "ec2"


def test_events_for_instances_that_are_not_workers_are_ignored(
    stack: LocalStack, relay: RelayProcess
) -> None:
    # An instance of the account that no stack launched: no worker or stack tag.
    stranger = stack.client("ec2").run_instances(
        ImageId="ami-0c0ffee0c0ffee000", MinCount=1, MaxCount=1, InstanceType="c5.large"
    )["Instances"][0]
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


def test_a_client_resumes_after_a_relay_restart_with_exactly_the_events_it_missed(
    stack: LocalStack,
) -> None:
    instance = launch_instance(stack.client("ec2"), "e2e-resume", "fay")
    worker = register_instance(instance, "e2e-resume", "fay", stack.region)
    events = stack.client("events")
    repository = bootstrap.worker_repository()

    def report(state: str, version: int) -> None:
        put_state_change(events, worker.instance_id, state, region=stack.region, account=ACCOUNT_ID)
        deadline = time.monotonic() + 30
        while repository.get(worker.worker_id).version < version:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{state} never applied"
            time.sleep(0.05)

    def mine(event: SseEvent) -> bool:
        return (
            event.event == "worker.status.updated" and event.json()["worker_id"] == worker.worker_id
        )

    first = RelayProcess(relay_environment(stack), port=free_port()).start()
    try:
        with SseStream(f"{first.url}/api/events/stream") as stream:
            stream.next()
            report("stopping", 2)
            last = stream.wait_for(mine, timeout=30).id
    finally:
        first.stop()
    report("stopped", 3)  # while no relay runs
    report("pending", 4)
    second = RelayProcess(relay_environment(stack), port=free_port()).start()
    try:
        with SseStream(
            f"{second.url}/api/events/stream", headers={"Last-Event-ID": str(last)}
        ) as stream:
            connected = stream.next()
            assert connected.json()["replay"]["status"] == "replayed"
            report("running", 5)
            got = [stream.wait_for(mine, timeout=30) for _ in range(3)]
    finally:
        second.stop()
    assert [e.json()["data"]["new_status"] for e in got] == ["stopped", "pending", "running"]
    assert [e.json()["version"] for e in got] == [3, 4, 5]
    assert len({e.id for e in got}) == 3
