"""Finding the worker of an EC2 event when the index lags or the worker is not saved yet.

The `ByInstanceId` index is eventually consistent and EventBridge can deliver a `pending`
before the API has saved the worker it just launched: neither may drop the event.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from cmlfleet import bootstrap
from cmlfleet.adapters.ec2 import STACK_TAG, WORKER_ID_TAG, BotoEc2Fleet
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.events.envelope import make_event
from cmlfleet.services.instance_state import WorkerNotSavedYetError, locate_worker
from devstack.lambdas import LambdaContext
from tests.conftest import FleetAws
from tests.unit.test_instance_state_handler import import_handler_module, sample

STACK = "cml-fleet-test"


class LaggingIndex(DynamoDbWorkerRepository):
    """The index has not caught up with the newest workers yet (it never does here)."""

    def find_by_instance_id(self, instance_id: str) -> Worker | None:
        return None


@pytest.fixture
def ec2(fleet_aws: FleetAws, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("STACK_NAME", STACK)
    bootstrap.reset()
    return boto3.client("ec2")


def launch(ec2: Any, tags: dict[str, str]) -> str:
    tagging = [
        {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
    ]
    instance_id: str = ec2.run_instances(
        ImageId="ami-0c0ffee0c0ffee000",
        MinCount=1,
        MaxCount=1,
        InstanceType="c5.large",
        TagSpecifications=tagging if tags else [],
    )["Instances"][0]["InstanceId"]
    return instance_id


def worker_for(instance_id: str, worker_id: str | None = None) -> tuple[Worker, list[Any]]:
    change = register_worker(
        name="lab", owner="alice", now=sample_time(), instance_id=instance_id, worker_id=worker_id
    )
    events = [
        make_event(p, worker_id=change.worker.worker_id, version=1, owner="alice")
        for p in change.events
    ]
    return change.worker, events


def sample_time() -> datetime:
    return datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def lagging(fleet_aws: FleetAws) -> LaggingIndex:
    return LaggingIndex(fleet_aws.table_name, fleet_aws.dynamodb, timedelta(days=7))


def test_a_worker_the_index_does_not_show_yet_is_found_by_its_instance_claim(
    fleet_aws: FleetAws, ec2: Any
) -> None:
    instance_id = launch(ec2, {})
    worker, events = worker_for(instance_id)
    repository = lagging(fleet_aws)
    repository.save(worker, events, expected_version=0)

    found = locate_worker(instance_id, repository, BotoEc2Fleet(ec2), stack=STACK, waits=())

    assert found == worker


def test_an_instance_of_this_stack_whose_worker_is_not_saved_yet_is_waited_for(
    fleet_aws: FleetAws, ec2: Any
) -> None:
    worker_id = "w-0123456789abcdef0123"
    instance_id = launch(ec2, {STACK_TAG: STACK, WORKER_ID_TAG: worker_id})
    worker, events = worker_for(instance_id, worker_id)
    repository = lagging(fleet_aws)
    saved_later = threading.Timer(0.3, repository.save, (worker, events), {"expected_version": 0})
    saved_later.start()

    found = locate_worker(
        instance_id, repository, BotoEc2Fleet(ec2), stack=STACK, waits=(0.2, 0.4, 0.8)
    )

    saved_later.join()
    assert found == worker


def test_an_unsaved_worker_of_this_stack_gives_the_event_back_to_lambda(
    fleet_aws: FleetAws, ec2: Any
) -> None:
    instance_id = launch(ec2, {STACK_TAG: STACK, WORKER_ID_TAG: "w-0123456789abcdef0123"})
    pauses: list[float] = []

    with pytest.raises(WorkerNotSavedYetError, match="not saved yet"):
        locate_worker(
            instance_id,
            lagging(fleet_aws),
            BotoEc2Fleet(ec2),
            stack=STACK,
            waits=(0.1, 0.2),
            pause=pauses.append,
        )
    assert pauses == [0.1, 0.2]


@pytest.mark.parametrize(
    "tags",
    [
        {},  # not a worker at all
        {STACK_TAG: "another-stack", WORKER_ID_TAG: "w-0123456789abcdef0123"},
        {WORKER_ID_TAG: "w-0123456789abcdef0123"},  # from before the stack tag
    ],
)
def test_an_instance_that_is_not_this_stacks_is_nobodys_worker(
    fleet_aws: FleetAws, ec2: Any, tags: dict[str, str]
) -> None:
    instance_id = launch(ec2, tags)
    repository = lagging(fleet_aws)
    assert locate_worker(instance_id, repository, BotoEc2Fleet(ec2), stack=STACK) is None


def test_an_instance_ec2_does_not_know_is_nobodys_worker(fleet_aws: FleetAws, ec2: Any) -> None:
    repository = lagging(fleet_aws)
    assert locate_worker("i-0123456789abcdef0", repository, BotoEc2Fleet(ec2), stack=STACK) is None


@pytest.fixture
def handler(fleet_aws: FleetAws) -> Any:
    return import_handler_module().lambda_handler


def test_the_handler_raises_for_an_unsaved_worker_so_lambda_retries_then_applies_it(
    fleet_aws: FleetAws, ec2: Any, handler: Any, lambda_context: LambdaContext
) -> None:
    worker_id = "w-0123456789abcdef0123"
    instance_id = launch(ec2, {STACK_TAG: STACK, WORKER_ID_TAG: worker_id})
    event = sample("pending")
    event["detail"]["instance-id"] = instance_id

    with pytest.raises(WorkerNotSavedYetError):
        handler(event, lambda_context)

    worker, events = worker_for(instance_id, worker_id)
    bootstrap.worker_repository().save(worker, events, expected_version=0)
    outcome = handler(event, lambda_context)  # Lambda's retry of the same event
    assert outcome["status"] == "applied"
    assert outcome["worker_id"] == worker_id
