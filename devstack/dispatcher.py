"""Delivering events to the handlers as AWS would: from rule tap queues and the table stream."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from devstack.lambdas import LocalFunction
from devstack.template import AsyncInvokeConfig

log = logging.getLogger("devstack.dispatcher")

DeadLetter = Callable[[str, list[dict[str, Any]]], None]


class Worker(threading.Thread):
    """A daemon thread that repeats `poll_once` until stopped, surviving its errors.

    When a poll finds nothing the wait doubles up to `max_idle_wait`, so an idle stack
    costs little; any work resets it.
    """

    def __init__(self, name: str, idle_wait: float, max_idle_wait: float | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self._idle_wait = idle_wait
        self._max_idle_wait = max_idle_wait if max_idle_wait is not None else idle_wait

    def run(self) -> None:
        wait = self._idle_wait
        while not self.stopping.is_set():
            try:
                busy = self.poll_once()
            except Exception:
                log.exception("%s failed; retrying", self.name)
                busy = False
            if busy:
                wait = self._idle_wait
            else:
                self.stopping.wait(wait)
                wait = min(max(wait * 2, 0.01), self._max_idle_wait)

    def poll_once(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()


# Lambda waits about a minute before the first retry of a failed asynchronous invocation
# and two before the second (Lambda Developer Guide, "invocation-async-error-handling").
LAMBDA_RETRY_DELAYS = (60.0, 120.0)
Destination = Callable[[dict[str, Any]], None]


class AsyncInvocation:
    """What Lambda does with an event it was given asynchronously (EventBridge rules and
    EventBridge Scheduler invoke functions so): run it; if the function fails, run it
    again after a delay up to `max_retries` times; then send a record of the failure to
    the function's `OnFailure` destination, or drop it. The rule's or schedule's own retry
    policy and dead-letter queue never see a function error: they are for events that
    could not be handed to Lambda at all."""

    def __init__(
        self,
        function: LocalFunction,
        config: AsyncInvokeConfig,
        *,
        destination: Destination | None = None,
        retry_delays: tuple[float, ...] = LAMBDA_RETRY_DELAYS,
    ) -> None:
        self.function, self.config = function, config
        self._destination, self._delays = destination, retry_delays
        self.last_result: Any = None  # what the last successful run returned (Lambda drops it)

    def attempt(self, event: dict[str, Any], number: int, age_seconds: float) -> float | None:
        """Run attempt `number` (1 is the first); the delay before the next one, or None
        when the event is done with (it succeeded, or went to the destination)."""
        if age_seconds > self.config.max_event_age_seconds:
            self._give_up(event, number - 1, "EventAgeExceeded", None)
            return None
        try:
            self.last_result = self.function.invoke(event)
        except Exception as error:
            if number <= self.config.max_retries:
                log.warning("%s failed (attempt %d); Lambda retries it", self.function.name, number)
                return self._delays[min(number, len(self._delays)) - 1]
            log.exception("%s failed %d times", self.function.name, number)
            self._give_up(event, number, "RetriesExhausted", error)
        return None

    def _give_up(
        self, event: dict[str, Any], attempts: int, condition: str, error: Exception | None
    ) -> None:
        if self._destination is None:
            log.error("%s: event dropped, as Lambda drops it (%s)", self.function.name, condition)
            return
        self._destination(failure_record(self.function, event, attempts, condition, error))


def failure_record(
    function: LocalFunction,
    event: dict[str, Any],
    attempts: int,
    condition: str,
    error: Exception | None,
) -> dict[str, Any]:
    """The record Lambda sends to an asynchronous invocation's OnFailure destination."""
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{function.arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "responsePayload": {
            "errorMessage": str(error) if error else condition,
            "errorType": type(error).__name__ if error else condition,
            "stackTrace": [],
        },
    }


class RuleTapDrainer(Worker):
    """Drains one tap queue (an EventBridge rule's target) into its function, invoking it
    asynchronously as EventBridge does (see `AsyncInvocation`): a failed event comes back
    on the queue after Lambda's retry delay (its visibility is set to it)."""

    def __init__(self, sqs: Any, queue_url: str, invocation: AsyncInvocation, account: str):
        super().__init__(f"tap-{invocation.function.logical_id}", idle_wait=0.0)
        self._sqs, self._queue_url = sqs, queue_url
        self._invocation, self._account = invocation, account

    def poll_once(self) -> bool:
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages = response.get("Messages", [])
        for message in messages:
            self._handle(message)
        return bool(messages)

    def _handle(self, message: dict[str, Any]) -> None:
        attributes = message.get("Attributes", {})
        attempt = int(attributes.get("ApproximateReceiveCount", "1"))
        age = time.time() - int(attributes.get("SentTimestamp", time.time() * 1000)) / 1000
        try:
            event = json.loads(message["Body"])
        except json.JSONDecodeError:
            log.error("tap message is not JSON (EventBridge sends none such); dropped")
            event = None
        if isinstance(event, dict):
            event.setdefault("account", self._account)  # moto's envelope lacks it
            retry_in = self._invocation.attempt(event, attempt, age)
            if retry_in is not None:
                self._sqs.change_message_visibility(
                    QueueUrl=self._queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=max(0, round(retry_in)),
                )
                return
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])


class StreamPoller(Worker):
    """Reads a DynamoDB stream and invokes the function with batches, like an event source
    mapping with `ReportBatchItemFailures`: a batch resumes from its first failed record,
    and after `max_retries` the rest of the batch goes to `on_failure` and is skipped."""

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        function: LocalFunction,
        *,
        region: str,
        batch_size: int,
        max_retries: int,
        on_failure: DeadLetter | None = None,
        poll_interval: float = 0.05,
        max_poll_interval: float = 0.5,
    ) -> None:
        super().__init__(
            f"stream-{function.logical_id}",
            idle_wait=poll_interval,
            max_idle_wait=max_poll_interval,
        )
        self._streams, self._arn, self._function = streams, stream_arn, function
        self._region, self._batch_size, self._max_retries = region, batch_size, max_retries
        self._on_failure = on_failure
        self._iterators: dict[str, str] = {}
        self._attempts: dict[str, int] = {}

    def poll_once(self) -> bool:
        if not self._iterators:
            self._open_shards()
        busy = False
        for shard_id, iterator in list(self._iterators.items()):
            response = self._streams.get_records(ShardIterator=iterator, Limit=self._batch_size)
            records = response.get("Records", [])
            resume_at = self._deliver(shard_id, records) if records else None
            busy = busy or bool(records)
            if resume_at is None:
                self._iterators[shard_id] = response["NextShardIterator"]
            else:  # resume at the first failed record on the next poll, as Lambda does
                self._iterators[shard_id] = self._streams.get_shard_iterator(
                    StreamArn=self._arn,
                    ShardId=shard_id,
                    ShardIteratorType="AT_SEQUENCE_NUMBER",
                    SequenceNumber=resume_at,
                )["ShardIterator"]
                self.stopping.wait(min(0.1 * 2 ** self._attempts[shard_id], 2.0))
        return busy

    def _open_shards(self) -> None:
        description = self._streams.describe_stream(StreamArn=self._arn)["StreamDescription"]
        for shard in description["Shards"]:
            self._iterators[shard["ShardId"]] = self._streams.get_shard_iterator(
                StreamArn=self._arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def _deliver(self, shard_id: str, records: list[dict[str, Any]]) -> str | None:
        """Invoke the function; the sequence number to resume at, or `None` to move on."""
        event = {
            "Records": [
                {**record, "eventSourceARN": self._arn, "awsRegion": self._region}
                for record in records
            ]
        }
        try:
            result = self._function.invoke(event) or {}
            failures = [f["itemIdentifier"] for f in result.get("batchItemFailures", [])]
        except Exception:
            log.exception("%s failed on a whole batch", self._function.name)
            failures = [records[0]["dynamodb"]["SequenceNumber"]]
        if not failures:
            self._attempts[shard_id] = 0
            return None
        first = min(failures, key=int)
        self._attempts[shard_id] = self._attempts.get(shard_id, 0) + 1
        if self._attempts[shard_id] <= self._max_retries:
            return str(first)
        log.error("%s gave up at record %s", self._function.name, first)
        self._attempts[shard_id] = 0
        if self._on_failure:
            failed = [
                {**r, "eventSourceARN": self._arn}
                for r in records
                if int(r["dynamodb"]["SequenceNumber"]) >= int(first)
            ]
            try:
                self._on_failure(shard_id, failed)
            except Exception:
                log.exception("sending the failed batch to its destination failed")
        return None


def rate_seconds(expression: str) -> float:
    """Seconds between runs of an EventBridge `rate(N unit)` expression."""
    match = re.fullmatch(
        r"rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)", expression.strip()
    )
    if match is None:
        raise ValueError(f"the local stack runs rate(...) schedules only, not {expression!r}")
    amount, unit = int(match.group(1)), match.group(2).rstrip("s")
    return amount * {"minute": 60, "hour": 3600, "day": 86400}[unit]


class ScheduleRunner(Worker):
    """Fires a function on its schedule, `speedup` times faster than the template says,
    invoking it asynchronously as EventBridge Scheduler does (see `AsyncInvocation`; the
    template gives the scheduled functions no retries, so a failed run is logged and the
    next one comes on time).

    The first run is right at start, so a new local stack shows data at once.
    """

    def __init__(
        self,
        invocation: AsyncInvocation,
        expression: str,
        *,
        speedup: float = 1.0,
        before_run: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(f"schedule-{invocation.function.logical_id}", idle_wait=0.0)
        self._invocation = invocation
        self.interval = rate_seconds(expression) / speedup
        self._before_run = before_run
        self.runs = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if self._before_run is not None:
                    self._before_run()
                self._fire(_scheduled_event(self._invocation.function.arn))
            except Exception:
                log.exception("scheduled %s failed", self._invocation.function.name)
            self.runs += 1
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))

    @property
    def last_result(self) -> Any:
        return self._invocation.last_result

    def _fire(self, event: dict[str, Any]) -> None:
        fired, attempt = time.monotonic(), 1
        while not self.stopping.is_set():
            retry_in = self._invocation.attempt(event, attempt, time.monotonic() - fired)
            if retry_in is None:
                return
            self.stopping.wait(retry_in)
            attempt += 1


def _scheduled_event(function_arn: str) -> dict[str, Any]:
    """The event EventBridge Scheduler sends with its default (empty) input."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resources": [function_arn],
        "detail": {},
    }
