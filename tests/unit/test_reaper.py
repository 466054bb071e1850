"""The queue reaper: the queues of dead relay tasks go, those of live ones stay."""

from __future__ import annotations

import time
from typing import Any

import boto3
from moto import mock_aws

from cmlfleet.services.reaper import HEARTBEAT_TAG, reap_relay_queues


def relay_queue(sqs: Any, sns: Any, topic: str, name: str, heartbeat: float | None) -> str:
    tags = {HEARTBEAT_TAG: str(int(heartbeat))} if heartbeat is not None else {}
    url: str = sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return url


@mock_aws
def test_only_queues_whose_heartbeat_went_stale_are_removed_with_their_subscriptions() -> None:
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    topic = sns.create_topic(Name="events")["TopicArn"]
    now = time.time()
    alive = relay_queue(sqs, sns, topic, "cmlfleet-relay-alive", now - 30)
    dead = relay_queue(sqs, sns, topic, "cmlfleet-relay-dead", now - 3600)
    fresh = relay_queue(sqs, sns, topic, "cmlfleet-relay-new", None)  # no beat yet
    other = sqs.create_queue(QueueName="someone-elses-queue")["QueueUrl"]

    result = reap_relay_queues(
        sqs, sns, topic_arn=topic, prefix="cmlfleet-relay", stale_after=600, now=now
    )

    assert result.deleted == [dead]
    assert (result.queues, result.kept) == (3, 2)
    remaining = set(sqs.list_queues()["QueueUrls"])
    assert remaining == {alive, fresh, other}
    endpoints = {
        s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    }
    assert not any(e.endswith("cmlfleet-relay-dead") for e in endpoints)
    assert len(endpoints) == 2
