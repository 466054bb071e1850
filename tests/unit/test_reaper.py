"""The queue reaper: the queues of dead relay tasks go, those of live ones (and those of
other stacks in the account) stay."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cmlfleet.services.reaper import (
    HEARTBEAT_TAG,
    TOPIC_TAG,
    reap_relay_queues,
    relay_queue_name,
)


def relay_queue(
    sqs: Any,
    sns: Any,
    topic: str,
    name: str,
    heartbeat: float | None,
    *,
    tagged_for: str | None = None,
) -> str:
    tags = {HEARTBEAT_TAG: str(int(heartbeat))} if heartbeat is not None else {}
    if tagged_for is not None:
        tags[TOPIC_TAG] = tagged_for
    url: str = sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return url


def task(label: str) -> str:
    """A 16-character task id."""
    return label.ljust(16, "0")


@mock_aws
def test_only_queues_whose_heartbeat_went_stale_are_removed_with_their_subscriptions() -> None:
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    topic = sns.create_topic(Name="events")["TopicArn"]
    now = time.time()
    name = lambda label: relay_queue_name("cmlfleet-relay", task(label))  # noqa: E731
    alive = relay_queue(sqs, sns, topic, name("alive"), now - 30, tagged_for=topic)
    dead = relay_queue(sqs, sns, topic, name("dead"), now - 3600, tagged_for=topic)
    fresh = relay_queue(sqs, sns, topic, name("new"), None, tagged_for=topic)  # no beat yet
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
    assert not any(e.endswith(name("dead")) for e in endpoints)
    assert len(endpoints) == 2


@mock_aws
def test_another_stacks_queues_are_left_alone_even_when_its_prefix_starts_with_ours() -> None:
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    ours = sns.create_topic(Name="ours")["TopicArn"]
    theirs = sns.create_topic(Name="theirs")["TopicArn"]
    long_ago = time.time() - 3600
    # cmlfleet-relay-dev-<task>: listed by the prefix cmlfleet-relay-, but not ours.
    longer = relay_queue(
        sqs, sns, theirs, relay_queue_name("cmlfleet-relay-dev", task("a")), long_ago
    )
    # The same prefix by mistake, but made for the other stack's topic.
    same_prefix = relay_queue(
        sqs,
        sns,
        theirs,
        relay_queue_name("cmlfleet-relay", task("b")),
        long_ago,
        tagged_for=theirs,
    )
    # No topic tag (a relay from before it existed) and subscribed to the other topic.
    untagged = relay_queue(sqs, sns, theirs, relay_queue_name("cmlfleet-relay", task("c")), 0)
    mine = relay_queue(
        sqs, sns, ours, relay_queue_name("cmlfleet-relay", task("d")), long_ago, tagged_for=ours
    )

    result = reap_relay_queues(
        sqs, sns, topic_arn=ours, prefix="cmlfleet-relay", stale_after=600, now=time.time()
    )

    assert result.deleted == [mine]
    assert result.foreign == 2  # the longer prefix's queue is not even considered
    assert set(sqs.list_queues()["QueueUrls"]) == {longer, same_prefix, untagged}
    theirs_endpoints = sns.list_subscriptions_by_topic(TopicArn=theirs)["Subscriptions"]
    assert len(theirs_endpoints) == 3


def test_a_relay_queue_is_the_prefix_and_a_task_id_of_exactly_sixteen_characters() -> None:
    assert relay_queue_name("cmlfleet-relay-prod", "0123456789abcdef") == (
        "cmlfleet-relay-prod-0123456789abcdef"
    )
    with pytest.raises(ValueError, match="16 characters"):
        relay_queue_name("cmlfleet-relay", "short")
