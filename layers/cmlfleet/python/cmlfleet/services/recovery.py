"""Doing again the work two dead-letter queues hold: outbox batches and EC2 reports.

- PublisherDeadLetterQueue gets only a pointer to a stream batch that could not be
  published (shard, sequence numbers, arrival times); stream records expire after 24 h.
  The events are still in the outbox (the event log, kept EVENT_TTL_DAYS), so
  `republish_from_outbox` publishes the events of the batch's arrival window again.
- InstanceStateDeadLetterQueue gets the EC2 reports InstanceStateFunction failed on
  (Lambda's on-failure record, with the event in `requestPayload`) and those EventBridge
  could not deliver (the plain event); `redrive_failed_events` runs each one again.

Both are safe to repeat. Every bus consumer drops an event id it has seen and applies
only a newer worker version, so a republished event changes nothing it already has; the
handler is idempotent on the EventBridge event id (Powertools), and a report older than
the one a worker last applied is ignored. A message is deleted only after its work was
done; any other stays, visible again at the end of the run, and is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from cmlfleet.adapters.publisher import EventPublisher
from cmlfleet.adapters.repository import hour_partition
from cmlfleet.events.envelope import CloudEvent, EnvelopeError
from cmlfleet.ids import first_uuid7_at, last_uuid7_at

logger = Logger(child=True)
DEFAULT_MARGIN = timedelta(minutes=2)  # stream arrival is the commit, a little after the id
VISIBILITY_SECONDS = 300  # long enough to handle one message; kept ones are released at the end
# A long poll: a short one asks only some of SQS's servers and can end a pass early.
RECEIVE_WAIT_SECONDS = 1

Invoke = Callable[[dict[str, Any]], object]  # raises when the function failed


class QueueClient(Protocol):
    """The SQS calls a redrive makes (a boto3 SQS client)."""

    def receive_message(self, **request: Any) -> dict[str, Any]: ...

    def delete_message(self, **request: Any) -> object: ...

    def change_message_visibility(self, **request: Any) -> object: ...


class EventLog(Protocol):
    """The outbox, read by time."""

    def events_between(self, window: Window) -> list[CloudEvent]: ...


@dataclass(frozen=True)
class Window:
    """A span of event time, both ends included."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("a window needs times with a time zone")
        if self.until < self.since:
            raise ValueError(f"window ends ({self.until}) before it starts ({self.since})")

    def partitions(self) -> Iterator[str]:
        """The event log partitions (one per hour) that hold the window's events."""
        hour = self.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        while hour <= self.until:
            yield hour_partition(hour)
            hour += timedelta(hours=1)


@dataclass(frozen=True)
class FailedBatch:
    """What a stream's on-failure record says about its batch: arrival times and size."""

    first_arrival: datetime
    last_arrival: datetime
    size: int

    @classmethod
    def from_message(cls, body: str) -> FailedBatch:
        try:
            info = json.loads(body)["DDBStreamBatchInfo"]
            first, last = (
                info["approximateArrivalOfFirstRecord"],
                info["approximateArrivalOfLastRecord"],
            )
            return cls(_utc(first), _utc(last), int(info["batchSize"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"not a stream failure record ({error!r})") from None

    def window(self, margin: timedelta = DEFAULT_MARGIN) -> Window:
        return Window(self.first_arrival - margin, self.last_arrival + margin)


@dataclass(frozen=True)
class FailedInvocation:
    """An EventBridge event that did not get through, with the error it last met."""

    event: dict[str, Any]
    error: str

    @property
    def event_id(self) -> str:
        return str(self.event["id"])

    @classmethod
    def from_message(cls, body: str) -> FailedInvocation:
        """Read either a Lambda on-failure record or a plain event (the rule's DLQ)."""
        try:
            message = json.loads(body)
        except ValueError:
            raise ValueError("not JSON") from None
        if isinstance(message, dict) and "requestPayload" in message:
            event, error = message["requestPayload"], _function_error(message)
        else:
            event, error = message, "not delivered by EventBridge"
        if not (isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]):
            raise ValueError("neither an on-failure record nor an EventBridge event")
        if "detail-type" not in event:
            raise ValueError(f"event {event['id']} has no detail-type")
        return cls(event, error)


@dataclass
class RepublishResult:
    """What a republish did: records read and deleted, events published, records kept."""

    records: int = 0
    deleted: int = 0
    events: list[str] = field(default_factory=list)  # republished (or, dry, would be)
    kept: dict[str, str] = field(default_factory=dict)  # message id → why it stays
    dry_run: bool = False

    @property
    def messages_kept(self) -> int:
        """Messages left in the queue for a reason (a dry run leaves all, for none)."""
        return len(self.kept)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"events_republished": len(self.events)}


@dataclass
class RedriveResult:
    """What a redrive did: messages read, events run again, failures, unreadable messages."""

    messages: int = 0
    events: list[str] = field(default_factory=list)  # run again and deleted (or, dry, would be)
    failed: dict[str, str] = field(default_factory=dict)  # event id → this run's error
    unreadable: dict[str, str] = field(default_factory=dict)  # message id → why
    last_errors: dict[str, str] = field(default_factory=dict)  # event id → the recorded error
    dry_run: bool = False

    @property
    def messages_kept(self) -> int:
        """Messages left in the queue for a reason (a dry run leaves all, for none)."""
        return len(self.failed) + len(self.unreadable)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"events_redriven": len(self.events)}


class DynamoDbEventLog:
    """The outbox items of the workers table, by window: ids are UUIDv7, so the window
    is a sort key range within each hour's partition."""

    def __init__(self, table_name: str, client: Any) -> None:
        self._table, self._client = table_name, client

    def events_between(self, window: Window) -> list[CloudEvent]:
        low, high = first_uuid7_at(window.since), last_uuid7_at(window.until)
        events: list[CloudEvent] = []
        for partition in window.partitions():
            events += self._query(partition, low, high)
        return events

    def _query(self, partition: str, low: str, high: str) -> list[CloudEvent]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": partition},
                ":low": {"S": low},
                ":high": {"S": high},
            },
        }
        events: list[CloudEvent] = []
        while True:
            response = self._client.query(**request)
            for item in response.get("Items", []):
                try:
                    events.append(CloudEvent.from_json(item["event"]["S"]))
                except (EnvelopeError, KeyError) as error:  # the publisher skips it too
                    logger.error(
                        "corrupt outbox item skipped", sk=item["sk"]["S"], reason=str(error)
                    )
            if "LastEvaluatedKey" not in response:
                return events
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def republish_window(
    event_log: EventLog, publisher: EventPublisher, window: Window, *, dry_run: bool = False
) -> RepublishResult:
    """Publish again every event of the window (an operator's choice, no DLQ record)."""
    result = RepublishResult(dry_run=dry_run)
    _republish(event_log.events_between(window), publisher, result)
    return result


def republish_from_outbox(
    sqs: QueueClient,
    queue_url: str,
    event_log: EventLog,
    publisher: EventPublisher,
    *,
    margin: timedelta = DEFAULT_MARGIN,
    dry_run: bool = False,
) -> RepublishResult:
    """Publish again the events of each failed stream batch in the publisher's DLQ.

    A batch's events are those the log holds for its arrival times widened by `margin`
    (an id is made a little before its item reaches the stream, and clocks differ). That
    takes in other events of the time too: harmless, consumers dedupe by id and keep only
    newer worker versions. A record is deleted once its window is on the bus again and
    held at least the batch's size of events; fewer (expired from the log?) keep it.
    """
    result = RepublishResult(dry_run=dry_run)

    def handle(message_id: str, body: str) -> bool:
        result.records += 1
        reason = _republish_batch(body, event_log, publisher, margin, result)
        if reason is not None:
            result.kept[message_id] = reason
        elif not dry_run:
            result.deleted += 1
            return True
        return False

    _work_through(sqs, queue_url, handle)
    return result


def _republish_batch(
    body: str,
    event_log: EventLog,
    publisher: EventPublisher,
    margin: timedelta,
    result: RepublishResult,
) -> str | None:
    """None when the batch's events are on the bus again, else why its record stays."""
    try:
        batch = FailedBatch.from_message(body)
    except ValueError as error:
        logger.error("publisher DLQ message unreadable", reason=str(error))
        return str(error)
    window = batch.window(margin)
    events = event_log.events_between(window)
    logger.info(
        "failed stream batch",
        since=window.since.isoformat(),
        until=window.until.isoformat(),
        batch_size=batch.size,
        events_found=len(events),
    )
    try:
        _republish(events, publisher, result)
    except Exception as error:  # the bus failed: the record stays for the next run
        logger.exception("republish failed", since=window.since.isoformat())
        return f"publish failed: {error}"
    if len(events) < batch.size:
        return f"only {len(events)} events in the log for a batch of {batch.size}"
    return None


def _republish(
    events: list[CloudEvent], publisher: EventPublisher, result: RepublishResult
) -> None:
    """Publish each event once per run (the windows of adjacent batches overlap)."""
    done = set(result.events)
    for event in (e for e in events if e.id not in done):
        if not result.dry_run:
            publisher.publish(event)  # the publisher's adapter: same message and attributes
        result.events.append(event.id)
        logger.info("event republished", event_id=event.id, type=event.type, dry_run=result.dry_run)


def redrive_failed_events(
    sqs: QueueClient, queue_url: str, invoke: Invoke, *, dry_run: bool = False
) -> RedriveResult:
    """Run each failed EC2 report of the queue again; delete its message once that worked.

    A failing invoke leaves the message (`failed`); one that is neither an on-failure
    record nor an EventBridge event is never deleted (`unreadable`).
    """
    result = RedriveResult(dry_run=dry_run)

    def handle(message_id: str, body: str) -> bool:
        result.messages += 1
        try:
            failed = FailedInvocation.from_message(body)
        except ValueError as error:
            logger.error("message unreadable", message_id=message_id, reason=str(error))
            result.unreadable[message_id] = str(error)
            return False
        return _redrive(failed, invoke, result)

    _work_through(sqs, queue_url, handle)
    return result


def _redrive(failed: FailedInvocation, invoke: Invoke, result: RedriveResult) -> bool:
    result.last_errors[failed.event_id] = failed.error
    if result.dry_run:
        logger.info("event would be redriven", event_id=failed.event_id, last_error=failed.error)
        result.events.append(failed.event_id)
        return False
    try:
        invoke(failed.event)
    except Exception as error:  # whatever the function or the call raised: the message stays
        logger.warning("redrive failed", event_id=failed.event_id, error=str(error))
        result.failed[failed.event_id] = str(error)
        return False
    logger.info("event redriven", event_id=failed.event_id)
    result.events.append(failed.event_id)
    return True


def _work_through(sqs: QueueClient, queue_url: str, handle: Callable[[str, str], bool]) -> None:
    """Give each message of the queue to `handle` once; delete those it finished.

    The others become visible again after the pass, not during it (they would come back).
    """
    kept: list[str] = []
    try:
        for message in _each_message_once(sqs, queue_url):
            if handle(message["MessageId"], message["Body"]):
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                kept.append(message["ReceiptHandle"])
    finally:
        for receipt in kept:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )


def _each_message_once(sqs: QueueClient, queue_url: str) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    while True:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
            VisibilityTimeout=VISIBILITY_SECONDS,
        )
        fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not fresh:
            return
        seen.update(m["MessageId"] for m in fresh)
        yield from fresh


def _function_error(record: Mapping[str, Any]) -> str:
    """`errorType: errorMessage` of a Lambda on-failure record, or its condition."""
    payload = record.get("responsePayload")
    if isinstance(payload, dict) and "errorMessage" in payload:
        return f"{payload.get('errorType', 'Error')}: {payload['errorMessage']}"
    context = record.get("requestContext")
    return str(context.get("condition", "failed")) if isinstance(context, dict) else "failed"


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment.astimezone(UTC)
