"""EventPublisherFunction: outbox items from the table's stream → the SNS topic."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from cmlfleet import bootstrap
from cmlfleet.adapters import aws
from cmlfleet.adapters.repository import event_partition
from cmlfleet.domain.worker import apply_ec2_state, register_worker
from cmlfleet.events.envelope import CloudEvent, make_event
from devstack.lambdas import LambdaContext
from tests.conftest import EVENTS_DIR, FleetAws

ROOT = Path(__file__).resolve().parents[2]
HANDLER_FILE = ROOT / "functions" / "event_publisher" / "app.py"
MODULE_NAME = "event_publisher_app"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/workers/stream/2026-11-30T00:00:00.000"

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]

# Powertools warns when a batch publishes nothing; those batches are expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


def import_handler_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, HANDLER_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler(fleet_aws: FleetAws) -> Iterator[Handler]:
    """The function's handler, imported fresh while moto is active."""
    module = import_handler_module()
    yield module.lambda_handler
    sys.modules.pop(MODULE_NAME, None)


@pytest.fixture
def queue_url(fleet_aws: FleetAws) -> str:
    return fleet_aws.subscribe_queue()


def sample_batch() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (EVENTS_DIR / "dynamodb_stream_outbox_insert.json").read_text()
    )
    return loaded


def sample_outbox_event() -> CloudEvent:
    image = sample_batch()["Records"][0]["dynamodb"]["NewImage"]
    return CloudEvent.from_json(image["event"]["S"])


def a_worker_event(seconds: int = 5) -> CloudEvent:
    """A real `worker.status.updated` for a new worker, as the services make it."""
    registered = register_worker(
        name="lab-1", owner="bob", now=datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    ).worker
    moment = datetime(2026, 11, 30, 10, 0, seconds, tzinfo=UTC)
    change = apply_ec2_state(registered, "running", observed_at=moment, now=moment)
    assert change is not None
    return make_event(
        change.events[0],
        worker_id=registered.worker_id,
        version=change.worker.version,
        owner="bob",
        time=moment,
    )


def outbox_record(
    cloud_event: CloudEvent,
    sequence_number: str,
    *,
    event_name: str = "INSERT",
    stored_json: str | None = None,
) -> dict[str, Any]:
    """A stream record of an outbox item, shaped as Lambda delivers it."""
    item = {
        "pk": event_partition(cloud_event),
        "sk": cloud_event.id,
        "kind": "event",
        "type": cloud_event.type,
        "worker_id": cloud_event.subject,
        "owner": cloud_event.owner,
        "event": cloud_event.to_json() if stored_json is None else stored_json,
        "expires_at": 1796637605,
    }
    serializer = TypeSerializer()
    new_image = {key: serializer.serialize(value) for key, value in item.items()}
    return {
        "eventID": f"event-{sequence_number}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1796032805,
            "Keys": {"pk": new_image["pk"], "sk": new_image["sk"]},
            "NewImage": new_image,
            "SequenceNumber": sequence_number,
            "SizeBytes": 512,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": STREAM_ARN,
    }


def received_events(fleet_aws: FleetAws, queue_url: str) -> list[CloudEvent]:
    return [CloudEvent.from_json(body) for body in fleet_aws.receive_all(queue_url)]


# ---- the sample batch ------------------------------------------------------------------


def test_an_outbox_insert_is_published_as_the_raw_cloudevent(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    response = handler(sample_batch(), lambda_context)

    assert response == {"batchItemFailures": []}
    bodies = fleet_aws.receive_all(queue_url)
    assert len(bodies) == 1  # the worker record of the batch is skipped
    assert CloudEvent.from_json(bodies[0]) == sample_outbox_event()


def test_the_published_message_is_the_json_stored_in_the_outbox(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    stored = sample_batch()["Records"][0]["dynamodb"]["NewImage"]["event"]["S"]

    handler(sample_batch(), lambda_context)

    (body,) = fleet_aws.receive_all(queue_url)
    assert json.loads(body) == json.loads(stored)


def test_the_message_carries_attributes_subscribers_can_filter_on(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    handler(sample_batch(), lambda_context)

    (message,) = fleet_aws.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    attributes = {
        name: value["StringValue"] for name, value in message["MessageAttributes"].items()
    }
    assert attributes == {
        "event_type": "worker.status.updated",
        "worker_id": "w-01a2b3c40000700080",
        "owner": "alice",
    }


def test_a_batch_of_only_worker_records_publishes_nothing(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    batch = sample_batch()
    batch["Records"] = batch["Records"][1:]

    response = handler(batch, lambda_context)

    assert response == {"batchItemFailures": []}
    assert fleet_aws.receive_all(queue_url) == []


@pytest.mark.parametrize("event_name", ["MODIFY", "REMOVE"])
def test_only_inserts_of_outbox_items_are_published(
    handler: Handler,
    fleet_aws: FleetAws,
    queue_url: str,
    lambda_context: LambdaContext,
    event_name: str,
) -> None:
    record = outbox_record(a_worker_event(), "201", event_name=event_name)

    response = handler({"Records": [record]}, lambda_context)

    assert response == {"batchItemFailures": []}
    assert fleet_aws.receive_all(queue_url) == []


def test_several_outbox_records_are_published_in_stream_order(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    first, second = a_worker_event(5), a_worker_event(6)

    response = handler(
        {"Records": [outbox_record(first, "301"), outbox_record(second, "302")]}, lambda_context
    )

    assert response == {"batchItemFailures": []}
    assert received_events(fleet_aws, queue_url) == [first, second]


# ---- failures --------------------------------------------------------------------------


def test_a_record_that_cannot_be_published_is_reported_and_the_others_still_go_out(
    handler: Handler,
    fleet_aws: FleetAws,
    queue_url: str,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing, fine = a_worker_event(5), a_worker_event(6)
    publisher = bootstrap.event_publisher()
    real_publish = publisher.publish

    def publish(event: CloudEvent) -> None:
        if event.id == failing.id:
            raise ConnectionError("SNS unreachable")
        real_publish(event)

    monkeypatch.setattr(publisher, "publish", publish)
    batch = {"Records": [outbox_record(failing, "401"), outbox_record(fine, "402")]}

    response = handler(batch, lambda_context)

    assert response == {"batchItemFailures": [{"itemIdentifier": "401"}]}
    assert received_events(fleet_aws, queue_url) == [fine]


def test_an_sns_client_error_fails_only_that_record(
    handler: Handler,
    fleet_aws: FleetAws,
    queue_url: str,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fine, throttled = a_worker_event(5), a_worker_event(6)
    sns = aws.client("sns")  # the cached client the publisher uses
    real_publish = sns.publish

    def publish(**arguments: Any) -> Any:
        if json.loads(arguments["Message"])["id"] == throttled.id:
            raise ClientError(
                {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish"
            )
        return real_publish(**arguments)

    monkeypatch.setattr(sns, "publish", publish)
    batch = {"Records": [outbox_record(fine, "501"), outbox_record(throttled, "502")]}

    response = handler(batch, lambda_context)

    assert response == {"batchItemFailures": [{"itemIdentifier": "502"}]}
    assert received_events(fleet_aws, queue_url) == [fine]


def test_a_corrupt_outbox_item_is_skipped_not_failed(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    fine = a_worker_event(6)
    corrupt = outbox_record(a_worker_event(5), "601", stored_json="{not json")

    response = handler({"Records": [corrupt, outbox_record(fine, "602")]}, lambda_context)

    assert response == {"batchItemFailures": []}
    assert received_events(fleet_aws, queue_url) == [fine]


def test_an_outbox_item_of_an_unknown_type_is_skipped_not_failed(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    document = json.loads(a_worker_event().to_json())
    document["type"] = "worker.exploded"
    record = outbox_record(a_worker_event(), "701", stored_json=json.dumps(document))

    response = handler({"Records": [record]}, lambda_context)

    assert response == {"batchItemFailures": []}
    assert fleet_aws.receive_all(queue_url) == []


# ---- a real round trip through the table's stream --------------------------------------


def stream_batch(fleet_aws: FleetAws) -> dict[str, Any]:
    """Everything in the table's stream from the start, wrapped as Lambda delivers it."""
    streams = boto3.client("dynamodbstreams")
    stream_arn = fleet_aws.dynamodb.describe_table(TableName=fleet_aws.table_name)["Table"][
        "LatestStreamArn"
    ]
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in streams.get_records(ShardIterator=iterator)["Records"]:
            stream = dict(record["dynamodb"])
            created = stream.get("ApproximateCreationDateTime")
            if isinstance(created, datetime):  # boto3 parses it; Lambda sends epoch seconds
                stream["ApproximateCreationDateTime"] = int(created.timestamp())
            records.append({**record, "dynamodb": stream, "eventSourceARN": stream_arn})
    return {"Records": records}


def test_events_saved_by_the_repository_reach_a_subscriber_through_the_stream(
    handler: Handler, fleet_aws: FleetAws, queue_url: str, lambda_context: LambdaContext
) -> None:
    repository = bootstrap.worker_repository()
    created = register_worker(
        name="lab-1",
        owner="carol",
        now=datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        instance_id="i-0abcdef1234567890",
    )
    created_events = [
        make_event(payload, worker_id=created.worker.worker_id, version=1, owner="carol")
        for payload in created.events
    ]
    repository.save(created.worker, created_events, expected_version=0)
    moment = datetime(2026, 11, 30, 10, 0, 5, tzinfo=UTC)
    change = apply_ec2_state(created.worker, "terminated", observed_at=moment, now=moment)
    assert change is not None
    change_events = [
        make_event(payload, worker_id=change.worker.worker_id, version=2, owner="carol")
        for payload in change.events
    ]
    repository.save(change.worker, change_events, expected_version=1)
    batch = stream_batch(fleet_aws)
    assert len(batch["Records"]) == 6  # two worker writes, the instance claim, three events

    response = handler(batch, lambda_context)

    assert response == {"batchItemFailures": []}
    received = received_events(fleet_aws, queue_url)
    assert sorted(received, key=lambda event: event.id) == created_events + change_events
    assert [event.type for event in sorted(received, key=lambda e: e.id)] == [
        "worker.created",
        "worker.status.updated",
        "worker.terminated",
    ]
