"""Faults that only real AWS produces, on the running local system: a function EventBridge
invokes failing for good (Lambda's asynchronous retries, then its OnFailure destination,
then the documented recovery), and DynamoDB cancelling transactions for a conflict or
for throttling. Each test checks the event log and what a client saw: nothing lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cmlfleet.services.recovery import redrive_failed_events
from devstack.ec2sim import Delays
from devstack.faults import TransactionCancellations
from devstack.fleetstack import FleetStack
from tests.integration.test_faults import (
    admin,
    api,
    collect_until,
    logged,
    reached,
    seen,
    status_of,
    stream,
)
from tests.localfleet import eventually, running_fleet

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetStack]:
    with running_fleet(
        ec2_delays=Delays(boot=1.0, stop=1.0, terminate=1.0),
        run_schedules=False,
        overrides={"POWERTOOLS_LOG_LEVEL": "CRITICAL"},
    ) as stack:
        yield stack


def launch(fleet: FleetStack, name: str) -> dict[str, Any]:
    response = httpx.post(
        f"{fleet.url}/api/workers", json={"name": name}, headers=admin(fleet), timeout=30
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def failure_records(fleet: FleetStack) -> list[dict[str, Any]]:
    """Every record in the instance-state failure queue (left there, visible again)."""
    assert fleet.stack is not None
    sqs = fleet.stack.client("sqs")
    url = fleet.stack.resources["InstanceStateDeadLetterQueue"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    count = int(attributes["ApproximateNumberOfMessages"])
    if count == 0:
        return []
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


def test_a_persistently_failing_instance_state_function_sends_the_ec2_events_to_its_destination(
    fleet: FleetStack,
) -> None:
    assert fleet.stack is not None
    with stream(fleet) as client:
        # Every save the function tries is throttled (its own retries included), for good.
        with TransactionCancellations(
            "ThrottlingError", count=None, callers={"InstanceStateFunction"}
        ) as fault:
            created = launch(fleet, "doomed")  # the API itself is not throttled
            worker_id, instance_id = created["worker_id"], created["instance_id"]
            records = eventually(
                lambda: failure_records(fleet),
                lambda found: (
                    {r["requestPayload"]["detail"]["state"] for r in found}
                    >= {"pending", "running"}
                ),
                timeout=60,
            )
        assert fault.cancelled >= 3 * 2  # two events, each tried three times by "Lambda"
        assert status_of(fleet, worker_id) == "provisioning"  # nothing was applied
        for record in records:
            assert record["requestPayload"]["detail"]["instance-id"] == instance_id
            assert record["requestContext"]["condition"] == "RetriesExhausted"
            assert record["requestContext"]["approximateInvokeCount"] == 3
            assert record["responsePayload"]["errorType"] == "TransientWriteError"

        # The documented recovery: scripts/recover.py ec2-events (here with the local
        # function as the invoker) runs each event again and empties the queue.
        result = redrive_failed_events(
            fleet.stack.client("sqs"),
            fleet.stack.resources["InstanceStateDeadLetterQueue"],
            fleet.stack.functions["InstanceStateFunction"].invoke,
        )
        assert result.failed == {}
        assert len(result.events) == len(records)
        eventually(lambda: status_of(fleet, worker_id), "running".__eq__)
        assert failure_records(fleet) == []
        events = collect_until(client, worker_id, reached(worker_id, "running"))
    in_log = logged(fleet, worker_id)
    assert seen(events, worker_id) == in_log  # the client got every logged event, in order
    assert len({version for _, version in in_log}) == len(in_log)  # no version twice


@pytest.mark.parametrize("reason", ["TransactionConflict", "ThrottlingError"])
def test_cancelled_transactions_are_retried_and_every_change_lands_once(
    fleet: FleetStack, reason: str
) -> None:
    with stream(fleet) as client:
        # Two cancellations of every writer's transactions along the way: the API's, the
        # EC2 reports' (InstanceStateFunction) — each retries after a jittered pause.
        with TransactionCancellations(reason, count=4) as fault:
            created = launch(fleet, f"contended-{reason.lower()}")
            worker_id = created["worker_id"]
            eventually(lambda: status_of(fleet, worker_id), "running".__eq__)
            api(fleet, "POST", f"/api/workers/{worker_id}/stop")
            eventually(lambda: status_of(fleet, worker_id), "stopped".__eq__)
        assert fault.cancelled == 4
        events = collect_until(client, worker_id, reached(worker_id, "stopped"))
    in_log = logged(fleet, worker_id)
    statuses = [
        e.json()["data"]["new_status"]
        for e in events
        if e.event == "worker.status.updated" and e.json()["worker_id"] == worker_id
    ]
    assert statuses == ["pending", "running", "stopping", "stopped"]
    assert seen(events, worker_id) == in_log
    versions = [version for _, version in in_log]
    assert versions == sorted(set(versions))  # each change once, in order (versions may skip)
