"""The relay's own SQS queue on the domain events topic, and the thread that drains it.

Each relay task creates its own queue at start (raw delivery from the topic, redrive to
the DLQ) and deletes it at stop, so every task sees every event (brief §3).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

from cmlfleet.events.envelope import CloudEvent, EnvelopeError
from cmlfleet.services.reaper import HEARTBEAT_TAG, TOPIC_TAG

logger = Logger(child=True)

EventSink = Callable[[list[CloudEvent]], None]
HEARTBEAT_SECONDS = 60
ROLE_TAG = "cmlfleet:role"


class SqsEventBus:
    """Creates, subscribes, polls and finally removes this relay's queue."""

    def __init__(
        self,
        *,
        sqs: Any,
        sns: Any,
        topic_arn: str,
        queue_name: str,
        poll_wait_seconds: int = 20,
        dlq_arn: str | None = None,
        max_receive_count: int = 5,
    ) -> None:
        self._sqs, self._sns = sqs, sns
        self._topic_arn = topic_arn
        self._queue_name = queue_name
        self._poll_wait = poll_wait_seconds
        self._dlq_arn = dlq_arn
        self._max_receives = max_receive_count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue_url: str | None = None
        self.subscription_arn: str | None = None
        self._queue_arn: str | None = None
        self._creation: dict[str, Any] | None = None
        self._last_receive: float | None = None
        self._last_beat = 0.0

    def open(self) -> None:
        """Create the queue, allow the topic to send to it, and subscribe with raw delivery.

        Safe to call again after it failed part-way: steps that succeeded are not redone,
        and the queue is always asked for with the same name, attributes and tags (SQS
        then answers with the existing queue), so a retry never makes a second queue or
        subscription, even when a failed call had in fact gone through.
        """
        if self.queue_url is None:
            self.queue_url = self._sqs.create_queue(**self._creation_request())["QueueUrl"]
        if self._queue_arn is None:
            self._queue_arn = self._sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        self._sqs.set_queue_attributes(
            QueueUrl=self.queue_url,
            Attributes={"Policy": _topic_may_send(self._topic_arn, self._queue_arn)},
        )
        if self.subscription_arn is None:
            self.subscription_arn = self._sns.subscribe(
                TopicArn=self._topic_arn,
                Protocol="sqs",
                Endpoint=self._queue_arn,
                Attributes={"RawMessageDelivery": "true"},
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
        self._last_receive = time.monotonic()
        logger.info("relay queue ready", queue_url=self.queue_url)

    def _creation_request(self) -> dict[str, Any]:
        """CreateQueue's arguments, fixed at the first attempt (its heartbeat included)."""
        if self._creation is None:
            attributes = {"MessageRetentionPeriod": "3600", "VisibilityTimeout": "30"}
            if self._dlq_arn:
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": self._dlq_arn, "maxReceiveCount": self._max_receives}
                )
            tags = {
                ROLE_TAG: "relay",
                TOPIC_TAG: self._topic_arn,
                HEARTBEAT_TAG: str(int(time.time())),
            }
            self._creation = {"QueueName": self._queue_name, "Attributes": attributes, "tags": tags}
            # The next beat is due a beat after the stamp above, however long set-up takes.
            self._last_beat = time.monotonic()
        return self._creation

    def start(self, sink: EventSink) -> None:
        """Drain the queue on a background thread, handing each batch of events to `sink`."""
        self._thread = threading.Thread(
            target=self._drain, args=(sink,), name="relay-sqs-poller", daemon=True
        )
        self._thread.start()

    def close(self, join_timeout: float = 25.0) -> None:
        """Stop polling, unsubscribe and delete the queue (best effort, logged)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(join_timeout)
        try:
            if self.subscription_arn:
                self._sns.unsubscribe(SubscriptionArn=self.subscription_arn)
            if self.queue_url:
                self._sqs.delete_queue(QueueUrl=self.queue_url)
        except Exception:  # cleanup must not hide the reason we are stopping
            logger.exception("relay queue cleanup failed; the reaper will remove it")
        else:
            logger.info("relay queue deleted", queue_url=self.queue_url)

    def _beat(self) -> None:
        """Tell the reaper this queue's relay is alive (it removes queues that go quiet)."""
        if time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._sqs.tag_queue(QueueUrl=self.queue_url, Tags={HEARTBEAT_TAG: str(int(time.time()))})
        self._last_beat = time.monotonic()

    def _release(self, message: dict[str, Any]) -> None:
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        except Exception:  # it comes back after the visibility timeout all the same
            logger.exception("could not release a poison message early")

    def seconds_since_receive(self) -> float | None:
        """Seconds since the queue last answered (set up, or a poll, empty or not)."""
        last = self._last_receive
        return None if last is None else time.monotonic() - last

    def _drain(self, sink: EventSink) -> None:
        while not self._stop.is_set():
            try:
                self._beat()
                self._receive_once(sink)
            except Exception:
                logger.exception("receiving from the relay queue failed; retrying")
                self._stop.wait(1.0)

    def _receive_once(self, sink: EventSink) -> None:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self._poll_wait
        )
        self._last_receive = time.monotonic()
        messages = response.get("Messages", [])
        if not messages:
            return
        events, done = [], []
        for message in messages:
            try:
                events.append(CloudEvent.from_json(message["Body"]))
            except EnvelopeError as error:
                logger.error("invalid message on the relay queue", reason=str(error))
                if self._dlq_arn:
                    # Leave it, visible again at once: after RELAY_MAX_RECEIVE_COUNT quick
                    # receives the redrive policy moves it to the DLQ (not one per 30 s).
                    self._release(message)
                    continue
            done.append(message)
        if events:
            sink(events)
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )


def _topic_may_send(topic_arn: str, queue_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
    )
