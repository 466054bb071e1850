"""The local stack's stand-ins for Lambda's event sources: stream poller and rule taps."""

from __future__ import annotations

import json
from typing import Any

import boto3
from moto import mock_aws

from devstack.dispatcher import AsyncInvocation, RuleTapDrainer, ScheduleRunner, StreamPoller
from devstack.lambdas import LocalFunction
from devstack.template import AsyncInvokeConfig


class FakeStreams:
    """DynamoDB Streams over in-memory shards; iterators are (shard, position) strings."""

    def __init__(self, shards: dict[str, list[int]]) -> None:
        self.shards = shards

    def describe_stream(self, StreamArn: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        return {"StreamDescription": {"Shards": [{"ShardId": s} for s in self.shards]}}

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        shard, kind = kwargs["ShardId"], kwargs["ShardIteratorType"]
        if kind == "TRIM_HORIZON":
            position = 0
        else:
            position = self.shards[shard].index(int(kwargs["SequenceNumber"]))
        return {"ShardIterator": f"{shard}@{position}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:  # noqa: N803
        shard, position = ShardIterator.rsplit("@", 1)
        start = int(position)
        numbers = self.shards[shard][start : start + Limit]
        return {
            "Records": [
                {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(n)}} for n in numbers
            ],
            "NextShardIterator": f"{shard}@{start + len(numbers)}",
        }


class Recorder:
    """A handler that fails the records it is told to, and remembers what it saw."""

    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing or set()
        self.seen: list[int] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in event["Records"]]
        self.seen.extend(numbers)
        return {
            "batchItemFailures": [{"itemIdentifier": str(n)} for n in numbers if n in self.failing]
        }


def function(handler: Any) -> LocalFunction:
    return LocalFunction(
        "Fn", "fn", "arn:aws:lambda:us-east-1:123456789012:function:fn", 30, handler
    )


def poller(streams: FakeStreams, handler: Any, **options: Any) -> StreamPoller:
    return StreamPoller(
        streams,
        "arn:stream",
        function(handler),
        region="us-east-1",
        batch_size=10,
        poll_interval=0,
        **options,
    )


def test_a_batch_resumes_from_its_first_failed_record_until_it_succeeds() -> None:
    handler = Recorder(failing={3})
    stream = poller(FakeStreams({"s1": [1, 2, 3, 4]}), handler, max_retries=5)
    stream.poll_once()
    handler.failing.clear()
    stream.poll_once()
    assert handler.seen == [1, 2, 3, 4, 3, 4]
    stream.poll_once()
    assert handler.seen == [1, 2, 3, 4, 3, 4]  # nothing new: the shard moved on


def test_after_its_retries_a_failing_batch_goes_to_the_failure_destination() -> None:
    dead: list[tuple[str, list[str]]] = []
    handler = Recorder(failing={2})
    stream = poller(
        FakeStreams({"s1": [1, 2, 3]}),
        handler,
        max_retries=2,
        on_failure=lambda shard, records: dead.append(
            (shard, [r["dynamodb"]["SequenceNumber"] for r in records])
        ),
    )
    for _ in range(3):
        stream.poll_once()
    assert dead == [("s1", ["2", "3"])]
    stream.poll_once()
    assert handler.seen.count(2) == 3  # first try and two retries, then never again


def test_retries_are_counted_per_shard() -> None:
    handler = Recorder(failing={2})
    dead: list[str] = []
    stream = poller(
        FakeStreams({"bad": [1, 2], "good": [10, 11, 12, 13]}),
        handler,
        max_retries=1,
        on_failure=lambda shard, records: dead.append(shard),
    )
    stream._batch_size = 1  # one record per poll so the good shard succeeds every time
    for _ in range(4):
        stream.poll_once()
    assert dead == ["bad"]


def test_a_failure_destination_that_fails_does_not_trap_the_shard() -> None:
    def broken(shard: str, records: list[dict[str, Any]]) -> None:
        raise RuntimeError("destination down")

    handler = Recorder(failing={1})
    stream = poller(FakeStreams({"s1": [1, 2]}), handler, max_retries=0, on_failure=broken)
    stream.poll_once()
    stream.poll_once()
    assert handler.seen == [1, 2]


def async_invocation(handler: Any, **config: Any) -> tuple[AsyncInvocation, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    invocation = AsyncInvocation(
        function(handler),
        AsyncInvokeConfig("Fn", **config),
        destination=sent.append if config.get("on_failure_id") else None,
        retry_delays=(0.0, 0.0),
    )
    return invocation, sent


class Failing:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> None:
        self.calls.append(event)
        raise RuntimeError("handler bug")


@mock_aws
def test_a_failing_function_runs_three_times_then_its_event_goes_to_the_failure_destination() -> (
    None
):
    sqs = boto3.client("sqs")
    tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
    handler = Failing()
    invocation, sent = async_invocation(handler, on_failure_id="Failures")
    drainer = RuleTapDrainer(sqs, tap, invocation, "123456789012")
    sqs.send_message(QueueUrl=tap, MessageBody=json.dumps({"id": "e1", "detail": {}}))

    for _ in range(5):
        drainer.poll_once()

    assert len(handler.calls) == 3  # the first try and Lambda's two retries
    assert handler.calls[0]["account"] == "123456789012"  # added, as moto's envelope lacks it
    [record] = sent
    assert record["requestPayload"]["id"] == "e1"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["functionArn"].endswith(":function:fn:$LATEST")
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "handler bug"
    assert "Messages" not in sqs.receive_message(QueueUrl=tap)


@mock_aws
def test_without_a_destination_lambda_drops_the_event_after_its_retries() -> None:
    sqs = boto3.client("sqs")
    tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
    handler = Failing()
    invocation, _ = async_invocation(handler, max_retries=1)
    drainer = RuleTapDrainer(sqs, tap, invocation, "123456789012")
    sqs.send_message(QueueUrl=tap, MessageBody=json.dumps({"id": "e1"}))
    for _ in range(4):
        drainer.poll_once()
    assert len(handler.calls) == 2
    assert "Messages" not in sqs.receive_message(QueueUrl=tap)


def test_an_event_older_than_its_maximum_age_is_not_run_but_sent_to_the_destination() -> None:
    handler = Failing()
    invocation, sent = async_invocation(handler, on_failure_id="Failures", max_event_age_seconds=60)
    assert invocation.attempt({"id": "old"}, 2, age_seconds=61) is None
    assert handler.calls == []
    assert sent[0]["requestContext"]["condition"] == "EventAgeExceeded"


def test_a_retry_waits_lambdas_delay_for_its_attempt() -> None:
    invocation = AsyncInvocation(
        function(Failing()), AsyncInvokeConfig("Fn"), retry_delays=(60.0, 120.0)
    )
    assert invocation.attempt({}, 1, 0) == 60.0
    assert invocation.attempt({}, 2, 61) == 120.0
    assert invocation.attempt({}, 3, 181) is None


def test_a_scheduled_function_with_no_retries_is_run_once_per_firing() -> None:
    handler = Failing()
    invocation, _ = async_invocation(handler, max_retries=0)
    runner = ScheduleRunner(invocation, "rate(1 minute)")
    runner._fire({"id": "tick"})
    assert len(handler.calls) == 1


@mock_aws
def test_a_rule_tap_drops_a_message_that_is_not_json() -> None:
    sqs = boto3.client("sqs")
    tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
    called: list[Any] = []
    invocation, sent = async_invocation(lambda e, c: called.append(e), on_failure_id="F")
    drainer = RuleTapDrainer(sqs, tap, invocation, "123456789012")
    sqs.send_message(QueueUrl=tap, MessageBody="not json")
    drainer.poll_once()
    assert (called, sent) == ([], [])
    assert "Messages" not in sqs.receive_message(QueueUrl=tap)
