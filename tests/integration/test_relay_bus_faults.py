"""The relay's bus when SQS fails: receives that error out are retried and nothing is lost;
a poison message goes to the dead-letter queue after the configured receives without
holding up the events behind it. Real SNS and SQS (a moto server over HTTP)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from botocore.exceptions import ClientError

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.events.envelope import CloudEvent
from relay.bus import SqsEventBus
from tests.integration.conftest import MotoEndpoint, status_event


class FailingReceives:
    """An SQS client whose next `times` receives fail, as SQS does when it throttles."""

    def __init__(self, client: Any, times: int) -> None:
        self._client, self.remaining, self.failed = client, times, 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def receive_message(self, **kwargs: Any) -> Any:
        with self._lock:
            if self.remaining > 0:
                self.remaining -= 1
                self.failed += 1
                raise ClientError(
                    {"Error": {"Code": "ThrottlingException", "Message": "injected"}},
                    "ReceiveMessage",
                )
        return self._client.receive_message(**kwargs)


def received(sink: queue.Queue[CloudEvent], count: int, timeout: float = 30) -> list[CloudEvent]:
    return [sink.get(timeout=timeout) for _ in range(count)]


def bus_for(
    moto_endpoint: MotoEndpoint, topic_arn: str, name: str, sqs: Any, **options: Any
) -> SqsEventBus:
    return SqsEventBus(
        sqs=sqs,
        sns=moto_endpoint.client("sns"),
        topic_arn=topic_arn,
        queue_name=name,
        poll_wait_seconds=1,
        **options,
    )


def test_failing_receives_are_retried_and_lose_nothing(
    moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs = FailingReceives(moto_endpoint.client("sqs"), times=3)
    bus = bus_for(moto_endpoint, topic_arn, "relay-receive-faults", sqs)
    bus.open()
    sink: queue.Queue[CloudEvent] = queue.Queue()
    bus.start(lambda events: [sink.put(e) for e in events])
    try:
        publisher = SnsEventPublisher(topic_arn, moto_endpoint.client("sns"))
        sent = [status_event(version) for version in range(2, 12)]
        for item in sent:
            publisher.publish(item)
        got = received(sink, len(sent))
    finally:
        bus.close()
    assert sqs.failed == 3  # the fault happened
    assert sorted(e.id for e in got) == sorted(e.id for e in sent)


def test_a_poison_message_goes_to_the_dlq_after_the_configured_receives(
    moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs = moto_endpoint.client("sqs")
    dlq_url = sqs.create_queue(QueueName="relay-poison-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus = bus_for(
        moto_endpoint, topic_arn, "relay-poison", sqs, dlq_arn=dlq_arn, max_receive_count=3
    )
    bus.open()
    assert bus.queue_url is not None
    sink: queue.Queue[CloudEvent] = queue.Queue()
    sqs.send_message(QueueUrl=bus.queue_url, MessageBody="not json at all")
    bus.start(lambda events: [sink.put(e) for e in events])
    try:
        good = status_event(2)
        SnsEventPublisher(topic_arn, moto_endpoint.client("sns")).publish(good)
        assert received(sink, 1)[0].id == good.id  # not held up by the poison
        message = _wait_for_message(sqs, dlq_url)
    finally:
        bus.close()
    assert message["Body"] == "not json at all"
    assert sink.empty()  # it never reached the clients


def _wait_for_message(sqs: Any, url: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
        if messages:
            return dict(messages[0])
    raise AssertionError(f"nothing arrived on {url} within {timeout} s")
