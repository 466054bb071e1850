"""Removing the queues of relay tasks that died without cleaning up.

A relay deletes its queue when it stops; one killed outright cannot. Every relay stamps
its queue with a heartbeat tag each minute, so a queue whose heartbeat is older than
`stale_after` belongs to a dead task: its subscription and the queue itself go.

Only this stack's queues are touched, though several stacks share the account: a relay
queue is named `<prefix>-<16-character task id>` (the IAM policies match exactly that),
and is tagged with the topic it was made for. A queue of another stack, even one whose
prefix starts with ours (`cmlfleet-relay-dev-...` against `cmlfleet-relay`), is left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(child=True)
HEARTBEAT_TAG = "cmlfleet:heartbeat"
TOPIC_TAG = "cmlfleet:topic"  # the domain events topic a relay queue was made for
TASK_ID_LENGTH = 16


@dataclass
class ReapResult:
    queues: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: int = 0
    foreign: int = 0  # matched the name but belong to another topic (another stack)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def relay_queue_name(prefix: str, task_id: str) -> str:
    """The queue a relay task makes: `<prefix>-<task id>`, the id exactly 16 characters."""
    if len(task_id) != TASK_ID_LENGTH:
        raise ValueError(f"a relay task id has {TASK_ID_LENGTH} characters, not {task_id!r}")
    return f"{prefix}-{task_id}"


def reap_relay_queues(
    sqs: Any, sns: Any, *, topic_arn: str, prefix: str, stale_after: float, now: float
) -> ReapResult:
    result = ReapResult()
    subscriptions = _subscriptions_by_endpoint(sns, topic_arn)
    for url in _queue_urls(sqs, prefix):
        tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        arn = _queue_arn(sqs, url)
        if not _made_for(topic_arn, tags, arn in subscriptions):
            result.foreign += 1
            continue
        result.queues += 1
        if now - _last_heartbeat(sqs, url, tags) <= stale_after:
            result.kept += 1
            continue
        if arn in subscriptions:
            sns.unsubscribe(SubscriptionArn=subscriptions[arn])
        sqs.delete_queue(QueueUrl=url)
        logger.info("stale relay queue removed", queue_url=url)
        result.deleted.append(url)
    return result


def _made_for(topic_arn: str, tags: dict[str, str], subscribed: bool) -> bool:
    """Is the queue this topic's? Its tag says so; a queue from before the tag existed
    counts if it is subscribed to the topic."""
    if TOPIC_TAG in tags:
        return tags[TOPIC_TAG] == topic_arn
    return subscribed


def _queue_urls(sqs: Any, prefix: str) -> list[str]:
    """This prefix's relay queues: `<prefix>-` and exactly a task id after it."""
    urls: list[str] = []
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=f"{prefix}-"):
        urls += page.get("QueueUrls", [])
    length = len(prefix) + 1 + TASK_ID_LENGTH
    return [url for url in urls if len(url.rsplit("/", 1)[-1]) == length]


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def _subscriptions_by_endpoint(sns: Any, topic_arn: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for subscription in page.get("Subscriptions", []):
            found[subscription["Endpoint"]] = subscription["SubscriptionArn"]
    return found


def _last_heartbeat(sqs: Any, url: str, tags: dict[str, str]) -> float:
    if HEARTBEAT_TAG in tags:
        try:
            return float(tags[HEARTBEAT_TAG])
        except ValueError:
            pass
    created = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
    return float(created["Attributes"]["CreatedTimestamp"])
