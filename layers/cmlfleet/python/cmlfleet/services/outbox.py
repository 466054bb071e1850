"""Relaying outbox items from the table's stream to the bus."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

from cmlfleet.adapters.publisher import EventPublisher
from cmlfleet.events.envelope import CloudEvent, EnvelopeError

logger = Logger(child=True)


def outbox_event(event_name: str | None, new_image: Mapping[str, Any] | None) -> CloudEvent | None:
    """The CloudEvent of a stream record if it is a newly written outbox item, else `None`.

    Worker items and removals (TTL expiry) also flow through the stream and are skipped.
    A corrupt outbox item cannot become valid by retrying: it is logged and skipped
    rather than blocking the shard.
    """
    if event_name != "INSERT" or not new_image or new_image.get("kind") != "event":
        return None
    try:
        return CloudEvent.from_json(str(new_image.get("event", "")))
    except EnvelopeError as error:
        logger.error("corrupt outbox item skipped", sk=new_image.get("sk"), reason=str(error))
        return None


def publish_outbox_record(
    event_name: str | None, new_image: Mapping[str, Any] | None, publisher: EventPublisher
) -> str | None:
    """Publish the record's event, returning its id; errors propagate so the batch retries."""
    event = outbox_event(event_name, new_image)
    if event is None:
        return None
    publisher.publish(event)
    logger.debug("event published", event_id=event.id, type=event.type, worker_id=event.subject)
    return event.id
