"""The relay's bus when SNS or SQS fails: set-up that fails part-way is retried without
a second queue or subscription, and a relay that cannot set up gives up after its budget;
receives that error out are retried and nothing is lost; a poison message goes to the
dead-letter queue after the configured receives without holding up the events behind it.
Real SNS and SQS (a moto server over HTTP)."""

from __future__ import annotations

import queue
import tempfile
import threading
import time
from typing import IO, Any

import pytest
from botocore.exceptions import ClientError

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.events.envelope import CloudEvent
from relay.bus import TOPIC_TAG, SqsEventBus
from tests.integration.conftest import MotoEndpoint, RelayFactory, status_event


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


class FailingOnce:
    """A client whose first call of `operation` fails; with `after=True` the call has
    reached the service first (the answer was lost, as when a read times out)."""

    def __init__(self, client: Any, operation: str, *, after: bool = False) -> None:
        self._client, self._operation, self._after = client, operation, after
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name != self._operation:
            return method

        def call(**kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                if self._after:
                    method(**kwargs)
                raise ClientError({"Error": {"Code": "Throttling", "Message": "injected"}}, name)
            return method(**kwargs)

        return call


@pytest.mark.parametrize(
    ("service", "operation", "after"),
    [
        ("sns", "subscribe", False),  # the queue exists, the subscription does not
        ("sns", "subscribe", True),  # both exist, the relay does not know it
        ("sqs", "create_queue", True),  # the queue exists, the relay does not know it
        ("sqs", "set_queue_attributes", False),  # the queue exists, the topic may not send
    ],
)
def test_a_set_up_that_failed_part_way_is_finished_by_the_next_attempt_without_a_second_queue(
    moto_endpoint: MotoEndpoint, topic_arn: str, service: str, operation: str, after: bool
) -> None:
    sqs, sns = moto_endpoint.client("sqs"), moto_endpoint.client("sns")
    faulty = FailingOnce(sqs if service == "sqs" else sns, operation, after=after)
    name = f"relay-partial-{service}-{operation}-{after}".replace("_", "-").lower()
    bus = SqsEventBus(
        sqs=faulty if service == "sqs" else sqs,
        sns=faulty if service == "sns" else sns,
        topic_arn=topic_arn,
        queue_name=name,
        poll_wait_seconds=1,
    )
    with pytest.raises(ClientError, match="injected"):
        bus.open()
    bus.open()
    sink: queue.Queue[CloudEvent] = queue.Queue()
    bus.start(lambda events: [sink.put(e) for e in events])
    try:
        assert faulty.calls == 2
        (url,) = sqs.list_queues(QueueNamePrefix=name)["QueueUrls"]
        assert sqs.list_queue_tags(QueueUrl=url)["Tags"][TOPIC_TAG] == topic_arn
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions] == [name]
        event = status_event(2)
        SnsEventPublisher(topic_arn, sns).publish(event)
        assert received(sink, 1)[0].id == event.id  # and the topic may send to it
    finally:
        bus.close()
    assert sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", []) == []


def test_a_relay_started_before_its_topic_exists_retries_until_it_does(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sns, sqs = moto_endpoint.client("sns"), moto_endpoint.client("sqs")
    later = topic_arn + "-later"
    with tempfile.TemporaryFile() as output:
        relay = start_relay(
            output=output,
            wait=False,
            TOPIC_ARN=later,
            RELAY_TASK_ID="late-topic-12345",
            RELAY_BUS_OPEN_SECONDS="60",
        )
        assert relay.process is not None
        wait_for_output(output, "opening the relay queue failed; retrying")
        sns.create_topic(Name=later.rsplit(":", 1)[-1])  # as IAM or the topic catches up
        relay.wait_ready(30)
        (url,) = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-late-topic")["QueueUrls"]
        subscriptions = sns.list_subscriptions_by_topic(TopicArn=later)["Subscriptions"]
        assert [s["Endpoint"] for s in subscriptions] == [queue_arn(sqs, url)]
        assert relay.stop() == 0


def test_a_relay_that_cannot_set_up_its_bus_gives_up_after_its_budget_and_leaves_no_queue(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs = moto_endpoint.client("sqs")
    with tempfile.TemporaryFile() as output:
        relay = start_relay(
            output=output,
            wait=False,
            TOPIC_ARN=topic_arn + "-never",
            RELAY_TASK_ID="no-topic-1234567",
            RELAY_BUS_OPEN_SECONDS="2",
        )
        assert relay.process is not None
        started = time.monotonic()
        code = relay.process.wait(30)
        elapsed = time.monotonic() - started
        output.seek(0)
        logs = output.read().decode()
    assert code != 0
    assert elapsed < 20
    assert logs.count("opening the relay queue failed; retrying") >= 2
    assert "opening the relay queue failed; giving up" in logs
    assert sqs.list_queues(QueueNamePrefix="cmlfleet-relay-no-topic").get("QueueUrls", []) == []


def queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def wait_for_output(output: IO[bytes], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output.seek(0)
        if text in output.read().decode(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the relay's output within {timeout} s")
