"""The event contract: the CloudEvents envelope and the catalog of event types."""

from cmlfleet.events.catalog import EVENT_TYPES, EventData
from cmlfleet.events.envelope import CloudEvent, EnvelopeError, make_event

__all__ = ["EVENT_TYPES", "CloudEvent", "EnvelopeError", "EventData", "make_event"]
