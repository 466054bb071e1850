"""Recovery from the dead-letter queues: outbox batches republished, EC2 reports redriven."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from cmlfleet import bootstrap
from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.events.catalog import WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from cmlfleet.services import recovery
from cmlfleet.services.recovery import (
    DynamoDbEventLog,
    FailedInvocation,
    Window,
    redrive_failed_events,
    republish_from_outbox,
    republish_window,
)
from devstack.lambdas import LambdaContext
from scripts import recover
from tests.conftest import EVENTS_DIR, FleetAws

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 30, 10, 30, 0, tzinfo=UTC)
INSTANCE_ID = "i-0abcdef1234567890"


@pytest.fixture(autouse=True)
def short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto waits out a long poll on an empty queue; it never misses a message on a short one.
    monkeypatch.setattr(recovery, "RECEIVE_WAIT_SECONDS", 0)


# ---- writing the outbox, reading queues --------------------------------------------------


def uuid7_at(moment: datetime) -> str:
    """A UUIDv7 of the given millisecond, as `cmlfleet.ids.uuid7` makes them."""
    value = int(moment.timestamp() * 1000) << 80 | 0x7 << 76 | random.getrandbits(12) << 64
    return str(uuid.UUID(int=value | 0b10 << 62 | random.getrandbits(62)))


class Outbox:
    """Writes events through the repository, as every service does (one version each)."""

    def __init__(self) -> None:
        self.repository = bootstrap.worker_repository()
        self.worker = register_worker(name="lab-1", owner="alice", now=T0).worker
        self.version = 0

    def write(self, moment: datetime, event_id: str | None = None) -> CloudEvent:
        self.version += 1
        payload = WorkerStatusUpdated(
            worker_id=self.worker.worker_id,
            old_status=WorkerStatus.PENDING,
            new_status=WorkerStatus.RUNNING,
            ec2_state="running",
            transition_started_at=None,
        )
        event = make_event(
            payload,
            worker_id=self.worker.worker_id,
            version=self.version,
            owner="alice",
            time=moment,
        ).model_copy(update={"id": event_id or uuid7_at(moment)})
        saved = self.worker.model_copy(update={"version": self.version})
        self.repository.save(saved, [event], expected_version=self.version - 1)
        return event


def stream_failure_record(first: datetime, last: datetime, batch_size: int) -> str:
    """What Lambda sends a DynamoDB stream's on-failure destination: a pointer, no events."""

    def stamp(moment: datetime) -> str:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return json.dumps(
        {
            "requestContext": {
                "requestId": "316aa6d0-8154-xmpl-9af7-85d5f4a6bc81",
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:publisher",
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": 11,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "version": "1.0",
            "timestamp": stamp(last + timedelta(minutes=5)),
            "DDBStreamBatchInfo": {
                "shardId": "shardId-00000001573689847184-864758bb",
                "startSequenceNumber": "800000000003126276362",
                "endSequenceNumber": "800000000003126276362",
                "approximateArrivalOfFirstRecord": stamp(first),
                "approximateArrivalOfLastRecord": stamp(last),
                "batchSize": batch_size,
                "streamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/workers/stream/x",
            },
        }
    )


def ec2_event(name: str = "running") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS_DIR / f"ec2_state_change_{name}.json").read_text())
    return loaded


def on_failure_record(event: dict[str, Any]) -> str:
    """What Lambda sends an asynchronous invocation's on-failure destination."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2026-11-30T10:03:05.123Z",
            "requestContext": {
                "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:state:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorMessage": "table throttled", "errorType": "ClientError"},
        }
    )


def queue_with(fleet_aws: FleetAws, *bodies: str, name: str = "dlq") -> str:
    url = str(fleet_aws.sqs.create_queue(QueueName=name)["QueueUrl"])
    for body in bodies:
        fleet_aws.sqs.send_message(QueueUrl=url, MessageBody=body)
    return url


def left_in(fleet_aws: FleetAws, queue_url: str) -> list[str]:
    """The bodies still in the queue and visible now (a kept message must be released)."""
    bodies: list[str] = []
    while True:
        response = fleet_aws.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60
        )
        if not response.get("Messages"):
            return sorted(bodies)
        bodies += [message["Body"] for message in response["Messages"]]


def bus_messages(fleet_aws: FleetAws, queue_url: str) -> list[dict[str, Any]]:
    """What a relay's queue got from the topic: body and message attributes."""
    received: list[dict[str, Any]] = []
    while True:
        response = fleet_aws.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        if not response.get("Messages"):
            return received
        for message in response["Messages"]:
            received.append({"body": message["Body"], "attributes": message["MessageAttributes"]})
            fleet_aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def event_log(fleet_aws: FleetAws) -> DynamoDbEventLog:
    return DynamoDbEventLog(fleet_aws.table_name, fleet_aws.dynamodb)


class FailingPublisher:
    def publish(self, event: CloudEvent) -> None:
        raise RuntimeError("sns is down")


# ---- A: the publisher's DLQ, republished from the outbox -----------------------------------


def test_only_the_events_of_the_failed_batchs_window_go_on_the_bus_as_the_publisher_sends_them(
    fleet_aws: FleetAws,
) -> None:
    outbox = Outbox()
    too_early = outbox.write(T0 - timedelta(minutes=3))
    in_margin = outbox.write(T0 - timedelta(seconds=90))
    in_batch = [outbox.write(T0), outbox.write(T0 + timedelta(seconds=4))]
    too_late = outbox.write(T0 + timedelta(minutes=10))
    dlq = queue_with(fleet_aws, stream_failure_record(T0, T0 + timedelta(seconds=4), 2))
    relay_queue = fleet_aws.subscribe_queue()
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), publisher)

    expected = [in_margin, *in_batch]
    assert result.events == [event.id for event in expected]
    assert too_early.id not in result.events
    assert too_late.id not in result.events
    assert (result.records, result.deleted, result.kept) == (1, 1, {})
    assert bus_messages(fleet_aws, relay_queue) == [
        {
            "body": event.to_json(),
            "attributes": {
                "event_type": {"DataType": "String", "StringValue": "worker.status.updated"},
                "worker_id": {"DataType": "String", "StringValue": outbox.worker.worker_id},
                "owner": {"DataType": "String", "StringValue": "alice"},
            },
        }
        for event in expected
    ]
    assert left_in(fleet_aws, dlq) == []


def test_a_window_across_the_hour_reads_both_hours_partitions(fleet_aws: FleetAws) -> None:
    outbox = Outbox()
    hour = T0.replace(minute=0)
    before, after = outbox.write(hour - timedelta(seconds=30)), outbox.write(hour)
    outbox.write(hour - timedelta(hours=1))

    events = event_log(fleet_aws).events_between(Window(hour - timedelta(minutes=1), hour))

    assert [event.id for event in events] == [before.id, after.id]


def test_the_window_ends_are_exact_to_the_millisecond(fleet_aws: FleetAws) -> None:
    outbox = Outbox()
    millisecond = timedelta(milliseconds=1)
    edges = [outbox.write(T0), outbox.write(T0 + timedelta(seconds=1))]
    outbox.write(T0 - millisecond)
    outbox.write(T0 + timedelta(seconds=1) + millisecond)

    events = event_log(fleet_aws).events_between(Window(T0, T0 + timedelta(seconds=1)))

    assert {event.id for event in events} == {event.id for event in edges}


def test_events_made_now_are_found_by_the_arrival_time_of_their_stream_records(
    fleet_aws: FleetAws,
) -> None:
    worker = register_worker(name="lab-1", owner="alice", now=datetime.now(UTC))
    event = make_event(
        worker.events[0], worker_id=worker.worker.worker_id, version=1, owner="alice"
    )  # a real UUIDv7 and event time, as `envelopes` makes them
    bootstrap.worker_repository().save(worker.worker, [event], expected_version=0)
    arrived = datetime.now(UTC)
    dlq = queue_with(fleet_aws, stream_failure_record(arrived, arrived, 1))
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), publisher)

    assert result.events == [event.id]
    assert result.deleted == 1


def test_a_record_stays_when_publishing_fails(fleet_aws: FleetAws) -> None:
    Outbox().write(T0)
    record = stream_failure_record(T0, T0, 1)
    dlq = queue_with(fleet_aws, record)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), FailingPublisher())

    assert result.deleted == 0
    assert list(result.kept.values()) == ["publish failed: sns is down"]
    assert result.events == []
    assert left_in(fleet_aws, dlq) == [record]


def test_a_record_stays_when_the_log_holds_fewer_events_than_its_batch(
    fleet_aws: FleetAws,
) -> None:
    found = Outbox().write(T0)
    record = stream_failure_record(T0, T0 + timedelta(seconds=2), 3)  # two have expired
    dlq = queue_with(fleet_aws, record)
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), publisher)

    assert result.events == [found.id]  # what is there still goes out
    assert list(result.kept.values()) == ["only 1 events in the log for a batch of 3"]
    assert left_in(fleet_aws, dlq) == [record]


def test_unreadable_publisher_dlq_messages_are_reported_and_kept(fleet_aws: FleetAws) -> None:
    garbage = ["not json", "[1, 2]", '{"DDBStreamBatchInfo": {"batchSize": 1}}']
    bad_time = stream_failure_record(T0, T0, 1).replace(".000Z", ".000")  # no zone
    dlq = queue_with(fleet_aws, *garbage, bad_time)
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), publisher)

    assert result.records == 4
    assert len(result.kept) == 4
    assert all(reason.startswith("not a stream failure record") for reason in result.kept.values())
    assert left_in(fleet_aws, dlq) == sorted([*garbage, bad_time])


def test_overlapping_windows_publish_each_event_once(fleet_aws: FleetAws) -> None:
    outbox = Outbox()
    events = [outbox.write(T0), outbox.write(T0 + timedelta(seconds=30))]
    dlq = queue_with(
        fleet_aws,
        stream_failure_record(T0, T0, 1),
        stream_failure_record(T0 + timedelta(seconds=30), T0 + timedelta(seconds=30), 1),
    )
    relay_queue = fleet_aws.subscribe_queue()
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(fleet_aws.sqs, dlq, event_log(fleet_aws), publisher)

    assert sorted(result.events) == sorted(event.id for event in events)
    assert len(bus_messages(fleet_aws, relay_queue)) == 2
    assert result.deleted == 2


def test_a_dry_run_lists_the_events_and_publishes_and_deletes_nothing(fleet_aws: FleetAws) -> None:
    event = Outbox().write(T0)
    record = stream_failure_record(T0, T0, 1)
    dlq = queue_with(fleet_aws, record)
    relay_queue = fleet_aws.subscribe_queue()
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_from_outbox(
        fleet_aws.sqs, dlq, event_log(fleet_aws), publisher, dry_run=True
    )

    assert result.events == [event.id]
    assert (result.deleted, result.kept, result.messages_kept) == (0, {}, 0)
    assert bus_messages(fleet_aws, relay_queue) == []
    assert left_in(fleet_aws, dlq) == [record]


def test_a_window_given_by_hand_is_republished_without_a_queue(fleet_aws: FleetAws) -> None:
    outbox = Outbox()
    inside = [outbox.write(T0), outbox.write(T0 + timedelta(minutes=20))]
    outbox.write(T0 + timedelta(minutes=40))
    relay_queue = fleet_aws.subscribe_queue()
    publisher = SnsEventPublisher(fleet_aws.topic_arn, fleet_aws.sns)

    result = republish_window(
        event_log(fleet_aws), publisher, Window(T0, T0 + timedelta(minutes=30))
    )

    assert result.events == [event.id for event in inside]
    bodies = [message["body"] for message in bus_messages(fleet_aws, relay_queue)]
    assert bodies == [event.to_json() for event in inside]


def test_a_corrupt_outbox_item_is_skipped_and_the_others_read(fleet_aws: FleetAws) -> None:
    good = Outbox().write(T0)
    fleet_aws.dynamodb.put_item(
        TableName=fleet_aws.table_name,
        Item={
            "pk": {"S": "EVENTS#2026113010"},
            "sk": {"S": uuid7_at(T0 + timedelta(seconds=1))},
            "kind": {"S": "event"},
            "event": {"S": '{"id": "broken"}'},
        },
    )

    events = event_log(fleet_aws).events_between(Window(T0, T0 + timedelta(minutes=1)))

    assert [event.id for event in events] == [good.id]


def test_a_window_needs_zoned_times_in_order() -> None:
    with pytest.raises(ValueError, match="time zone"):
        Window(datetime(2026, 11, 30, 10), datetime(2026, 11, 30, 11))
    with pytest.raises(ValueError, match="before it starts"):
        Window(T0, T0 - timedelta(seconds=1))


# ---- B: failed EC2 reports, run again --------------------------------------------------


class Recorder:
    """An `Invoke` that records the events and fails for the ids it is told to."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.failing = failing or set()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["id"] in self.failing:
            raise RuntimeError("still failing")


def test_both_record_shapes_are_run_again_with_the_original_event_and_deleted(
    fleet_aws: FleetAws,
) -> None:
    from_lambda, from_rule = ec2_event("pending"), ec2_event("running")
    dlq = queue_with(fleet_aws, on_failure_record(from_lambda), json.dumps(from_rule))
    invoke = Recorder()

    result = redrive_failed_events(fleet_aws.sqs, dlq, invoke)

    assert sorted(invoke.events, key=lambda e: e["id"]) == sorted(
        [from_lambda, from_rule], key=lambda e: e["id"]
    )
    assert sorted(result.events) == sorted([from_lambda["id"], from_rule["id"]])
    assert result.last_errors == {
        from_lambda["id"]: "ClientError: table throttled",
        from_rule["id"]: "not delivered by EventBridge",
    }
    assert (result.messages, result.failed, result.unreadable) == (2, {}, {})
    assert left_in(fleet_aws, dlq) == []


def test_a_message_is_deleted_only_after_its_invoke_returned(fleet_aws: FleetAws) -> None:
    dlq = queue_with(fleet_aws, on_failure_record(ec2_event()))
    in_queue_during_invoke: list[int] = []

    def invoke(event: dict[str, Any]) -> None:
        attributes = fleet_aws.sqs.get_queue_attributes(
            QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        in_queue_during_invoke.append(int(attributes["ApproximateNumberOfMessagesNotVisible"]))

    redrive_failed_events(fleet_aws.sqs, dlq, invoke)

    assert in_queue_during_invoke == [1]
    assert left_in(fleet_aws, dlq) == []


def test_a_failing_invoke_leaves_its_message_and_the_others_go_on(fleet_aws: FleetAws) -> None:
    stuck, fine = ec2_event("pending"), ec2_event("running")
    stuck_record = on_failure_record(stuck)
    dlq = queue_with(fleet_aws, stuck_record, on_failure_record(fine))

    result = redrive_failed_events(fleet_aws.sqs, dlq, Recorder(failing={stuck["id"]}))

    assert result.events == [fine["id"]]
    assert result.failed == {stuck["id"]: "still failing"}
    assert result.messages_kept == 1
    assert left_in(fleet_aws, dlq) == [stuck_record]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2, 3]", "neither an on-failure record nor an EventBridge event"),
        ('{"requestPayload": null}', "neither an on-failure record nor an EventBridge event"),
        ('{"detail-type": "x", "id": ""}', "neither an on-failure record nor an EventBridge event"),
        ('{"id": "abc", "detail": {}}', "event abc has no detail-type"),
    ],
)
def test_garbage_is_reported_and_kept_and_never_invoked(
    fleet_aws: FleetAws, body: str, reason: str
) -> None:
    dlq = queue_with(fleet_aws, body)
    invoke = Recorder()

    result = redrive_failed_events(fleet_aws.sqs, dlq, invoke)

    assert invoke.events == []
    assert list(result.unreadable.values()) == [reason]
    assert left_in(fleet_aws, dlq) == [body]


def test_a_dry_run_invokes_nothing_and_keeps_every_message(fleet_aws: FleetAws) -> None:
    event = ec2_event()
    dlq = queue_with(fleet_aws, on_failure_record(event), "garbage")
    invoke = Recorder()

    result = redrive_failed_events(fleet_aws.sqs, dlq, invoke, dry_run=True)

    assert invoke.events == []
    assert result.events == [event["id"]]
    assert len(result.unreadable) == 1
    assert len(left_in(fleet_aws, dlq)) == 2


def test_an_on_failure_record_without_an_error_payload_names_its_condition() -> None:
    record = json.loads(on_failure_record(ec2_event()))
    record["requestContext"]["condition"] = "EventAgeExceeded"
    del record["responsePayload"]

    failed = FailedInvocation.from_message(json.dumps(record))

    assert failed.error == "EventAgeExceeded"
    assert failed.event == ec2_event()


# ---- B against the real handler: idempotent on the event id ------------------------------


@pytest.fixture
def instance_state_handler(fleet_aws: FleetAws) -> Iterator[Callable[..., Any]]:
    path = ROOT / "functions" / "instance_state" / "app.py"
    spec = importlib.util.spec_from_file_location("recovery_instance_state_app", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module.lambda_handler
    sys.modules.pop(spec.name, None)


def provisioning_worker() -> Worker:
    change = register_worker(
        name="lab-1", owner="alice", now=T0 - timedelta(hours=1), instance_id=INSTANCE_ID
    )
    events = [make_event(change.events[0], worker_id=change.worker.worker_id, version=1, owner="a")]
    bootstrap.worker_repository().save(change.worker, events, expected_version=0)
    return change.worker


def status_events(fleet_aws: FleetAws) -> list[dict[str, Any]]:
    items = fleet_aws.dynamodb.scan(TableName=fleet_aws.table_name)["Items"]
    return [item for item in items if item.get("type", {}).get("S") == "worker.status.updated"]


def test_redriving_after_a_failure_applies_once_and_a_duplicate_changes_nothing(
    fleet_aws: FleetAws,
    instance_state_handler: Callable[..., Any],
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = provisioning_worker()
    repository = bootstrap.worker_repository()
    event = ec2_event("running")
    with monkeypatch.context() as patch:  # the first run fails while saving
        patch.setattr(repository, "save", _raise)
        with pytest.raises(RuntimeError):
            instance_state_handler(event, lambda_context)
    dlq = queue_with(fleet_aws, on_failure_record(event), json.dumps(event))  # and a duplicate

    result = redrive_failed_events(
        fleet_aws.sqs, dlq, lambda e: instance_state_handler(e, lambda_context)
    )

    assert result.events == [event["id"], event["id"]]
    stored = repository.get(worker.worker_id)
    assert stored is not None
    assert (stored.status, stored.version) == (WorkerStatus.RUNNING, 2)
    assert len(status_events(fleet_aws)) == 1
    assert left_in(fleet_aws, dlq) == []


def _raise(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("dynamodb unavailable")


# ---- the command line ------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, dict[str, Any]]:
    output = io.StringIO()
    with redirect_stdout(output):
        status = recover.main(list(argv))
    return status, json.loads(output.getvalue())


def test_the_cli_republishes_the_dlq_of_the_stack(fleet_aws: FleetAws) -> None:
    event = Outbox().write(T0)
    dlq = queue_with(fleet_aws, stream_failure_record(T0, T0, 1))
    names = {
        "PublisherDeadLetterQueue": dlq,
        "WorkersTable": fleet_aws.table_name,
        "DomainEventsTopic": fleet_aws.topic_arn,
    }
    relay_queue = fleet_aws.subscribe_queue()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recover.Stack, "resource", lambda self, given, logical, flag: names[logical])
        status, report = run_cli("outbox", "--stack", "cmlfleet-test", "--region", "us-east-1")

    assert status == 0
    assert (report["records"], report["events_republished"]) == (1, 1)
    assert [m["body"] for m in bus_messages(fleet_aws, relay_queue)] == [event.to_json()]


def test_the_cli_takes_a_window_by_hand(fleet_aws: FleetAws) -> None:
    event = Outbox().write(T0)
    status, report = run_cli(
        "outbox",
        "--table",
        fleet_aws.table_name,
        "--topic-arn",
        fleet_aws.topic_arn,
        "--since",
        "2026-11-30T10:29:00Z",
        "--until",
        "2026-11-30T10:31:00",  # no zone: UTC
        "--dry-run",
    )

    assert status == 0
    assert report["events"] == [event.id]
    assert report["dry_run"] is True


def test_the_cli_exits_1_when_messages_stay(fleet_aws: FleetAws) -> None:
    dlq = queue_with(fleet_aws, "garbage")
    status, report = run_cli(
        "ec2-events", "--queue-url", dlq, "--function-name", "state", "--region", "us-east-1"
    )

    assert status == 1
    assert report["messages"] == 1
    assert list(report["unreadable"].values()) == ["not JSON"]


def test_the_cli_refuses_a_half_window_or_missing_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as half:
        recover.main(["outbox", "--table", "t", "--topic-arn", "a", "--since", "2026-11-30"])
    assert half.value.code == 2
    assert "--since and --until go together" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give --queue-url or --stack"):
        recover.main(["ec2-events", "--function-name", "state"])


def test_the_cli_finds_names_among_the_stacks_resources(fleet_aws: FleetAws) -> None:
    template = {"Resources": {"PublisherDeadLetterQueue": {"Type": "AWS::SQS::Queue"}}}
    boto3.client("cloudformation").create_stack(
        StackName="fleet", TemplateBody=json.dumps(template)
    )
    stack = recover.Stack(boto3.session.Session(), "fleet")

    url = stack.resource(None, "PublisherDeadLetterQueue", "--queue-url")

    assert url.startswith("https://sqs.")
    assert "PublisherDeadLetterQueue" in url
    assert stack.resource("given", "PublisherDeadLetterQueue", "--queue-url") == "given"


class FakeLambda:
    def __init__(self, function_error: str | None) -> None:
        self.function_error, self.calls = function_error, list[dict[str, Any]]()

    def invoke(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        answer = {"errorMessage": "boom"} if self.function_error else {"status": "applied"}
        response: dict[str, Any] = {
            "StatusCode": 200,
            "Payload": io.BytesIO(json.dumps(answer).encode()),
        }
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def test_the_lambda_invoker_waits_for_the_answer_and_raises_on_a_function_error() -> None:
    event = ec2_event()
    working, failing = FakeLambda(None), FakeLambda("Unhandled")

    recover.lambda_invoker(working, "state")(event)
    with pytest.raises(recover.InvocationFailedError, match=r"Unhandled.*boom"):
        recover.lambda_invoker(failing, "state")(event)

    (call,) = working.calls
    assert call["FunctionName"] == "state"
    assert call["InvocationType"] == "RequestResponse"
    assert json.loads(call["Payload"]) == event


class OneItemPages:
    """A DynamoDB client whose queries answer one item a page."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def query(self, **request: Any) -> dict[str, Any]:
        response: dict[str, Any] = self._client.query(**request, Limit=1)
        return response


def test_the_event_log_reads_every_page_of_a_partition(fleet_aws: FleetAws) -> None:
    outbox = Outbox()
    events = [outbox.write(T0 + timedelta(seconds=second)) for second in range(3)]
    log = DynamoDbEventLog(fleet_aws.table_name, OneItemPages(fleet_aws.dynamodb))

    found = log.events_between(Window(T0, T0 + timedelta(minutes=1)))

    assert [event.id for event in found] == [event.id for event in events]
