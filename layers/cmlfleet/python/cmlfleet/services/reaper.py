"""Removing the queues of relay tasks that died without cleaning up.

A relay deletes its queue when it stops; one killed outright cannot. Every relay stamps
its queue with a heartbeat tag each minute, so a queue whose heartbeat is older than
`stale_after` belongs to a dead task: its subscription and the queue itself go.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(child=True)
HEARTBEAT_TAG = "cmlfleet:heartbeat"


@dataclass
class ReapResult:
    queues: int = 0
    deleted: list[str] = field(default_factory=list)
    kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reap_relay_queues(
    sqs: Any, sns: Any, *, topic_arn: str, prefix: str, stale_after: float, now: float
) -> ReapResult:
    result = ReapResult()
    subscriptions = _subscriptions_by_endpoint(sns, topic_arn)
    for url in _queue_urls(sqs, prefix):
        result.queues += 1
        if now - _last_heartbeat(sqs, url) <= stale_after:
            result.kept += 1
            continue
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        if arn in subscriptions:
            sns.unsubscribe(SubscriptionArn=subscriptions[arn])
        sqs.delete_queue(QueueUrl=url)
        logger.info("stale relay queue removed", queue_url=url)
        result.deleted.append(url)
    return result


def _queue_urls(sqs: Any, prefix: str) -> list[str]:
    urls: list[str] = []
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix):
        urls += page.get("QueueUrls", [])
    return urls


def _subscriptions_by_endpoint(sns: Any, topic_arn: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for subscription in page.get("Subscriptions", []):
            found[subscription["Endpoint"]] = subscription["SubscriptionArn"]
    return found


def _last_heartbeat(sqs: Any, url: str) -> float:
    tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
    if HEARTBEAT_TAG in tags:
        try:
            return float(tags[HEARTBEAT_TAG])
        except ValueError:
            pass
    created = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
    return float(created["Attributes"]["CreatedTimestamp"])
