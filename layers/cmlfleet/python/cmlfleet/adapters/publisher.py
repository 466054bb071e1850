"""Publishing domain events to the SNS topic (the bus)."""

from __future__ import annotations

from typing import Any, Protocol

from cmlfleet.events.envelope import CloudEvent


class EventPublisher(Protocol):
    """The port for putting one event on the bus."""

    def publish(self, event: CloudEvent) -> None: ...


class SnsEventPublisher:
    """One CloudEvent per SNS message, with attributes subscribers can filter on."""

    def __init__(self, topic_arn: str, client: Any) -> None:
        self._topic_arn = topic_arn
        self._client = client

    def publish(self, event: CloudEvent) -> None:
        self._client.publish(
            TopicArn=self._topic_arn,
            Message=event.to_json(),
            MessageAttributes={
                "event_type": {"DataType": "String", "StringValue": event.type},
                "worker_id": {"DataType": "String", "StringValue": event.subject},
                "owner": {"DataType": "String", "StringValue": event.owner},
            },
        )


class InMemoryEventPublisher:
    """A fake publisher that records what it was given."""

    def __init__(self) -> None:
        self.published: list[CloudEvent] = []

    def publish(self, event: CloudEvent) -> None:
        self.published.append(event)
