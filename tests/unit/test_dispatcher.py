"""The local stack's stand-ins for Lambda's event sources: stream poller and rule taps."""

from __future__ import annotations

import json
from typing import Any

import boto3
from moto import mock_aws

from devstack.dispatcher import RuleTapDrainer, StreamPoller
from devstack.lambdas import LocalFunction


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


@mock_aws
def test_a_rule_tap_dead_letters_an_event_once_its_retries_are_spent() -> None:
    sqs = boto3.client("sqs")
    tap = sqs.create_queue(QueueName="tap", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    calls: list[dict[str, Any]] = []

    def failing(event: dict[str, Any], context: Any) -> None:
        calls.append(event)
        raise RuntimeError("handler bug")

    drainer = RuleTapDrainer(sqs, tap, function(failing), "123456789012", 1, dlq)
    sqs.send_message(QueueUrl=tap, MessageBody=json.dumps({"id": "e1", "detail": {}}))
    for _ in range(3):
        drainer.poll_once()
    assert len(calls) == 2  # the first try and one retry
    assert calls[0]["account"] == "123456789012"  # added, as moto's envelope lacks it
    dead = sqs.receive_message(QueueUrl=dlq)["Messages"]
    assert json.loads(dead[0]["Body"])["id"] == "e1"
    assert "Messages" not in sqs.receive_message(QueueUrl=tap)


@mock_aws
def test_a_rule_tap_dead_letters_a_message_that_is_not_json_at_once() -> None:
    sqs = boto3.client("sqs")
    tap = sqs.create_queue(QueueName="tap")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    drainer = RuleTapDrainer(sqs, tap, function(lambda e, c: None), "123456789012", 5, dlq)
    sqs.send_message(QueueUrl=tap, MessageBody="not json")
    drainer.poll_once()
    assert sqs.receive_message(QueueUrl=dlq)["Messages"][0]["Body"] == "not json"
    assert "Messages" not in sqs.receive_message(QueueUrl=tap)
