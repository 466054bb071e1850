"""The relay over real HTTP: a `python -m relay` process under uvicorn, fed by moto SNS/SQS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.services.reaper import reap_relay_queues
from devstack.relayproc import PYTHONPATH
from tests.integration.conftest import MotoEndpoint, RelayFactory, status_event
from tests.sse_client import SseStream


def test_a_client_gets_connected_first_then_heartbeats(start_relay: RelayFactory) -> None:
    relay = start_relay(HEARTBEAT_SECONDS="0.3", RELAY_RETRY_MS="2500")
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        connected = stream.next()
        assert connected.event == "connected"
        assert connected.retry == 2500
        assert connected.json()["heartbeat_seconds"] == 0.3
        assert connected.json()["replay"]["status"] == "none"
        heartbeat = stream.next(timeout=5)
        assert heartbeat.event == "heartbeat"
        assert heartbeat.id is None
        assert heartbeat.json()["server_time"].endswith("Z")
    assert stream.status_code == 200
    headers = stream.response_headers
    assert headers is not None
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "connection" not in headers


def test_an_event_published_on_the_topic_reaches_the_client_as_one_frame(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    relay = start_relay()
    publisher = SnsEventPublisher(topic_arn, moto_endpoint.client("sns"))
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        assert stream.next().event == "connected"
        event = status_event()
        publisher.publish(event)
        received = stream.wait_for(lambda e: e.event == "worker.status.updated")
    assert received.id == event.id
    assert received.json() == {
        "id": event.id,
        "type": "worker.status.updated",
        "time": event.model_dump(mode="json")["time"],
        "worker_id": "w-1",
        "version": 2,
        "data": event.data,
    }


def test_a_malformed_bus_message_is_skipped_and_later_events_still_arrive(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    relay = start_relay()
    sns = moto_endpoint.client("sns")
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        sns.publish(TopicArn=topic_arn, Message='{"not": "a cloud event"}')
        sns.publish(TopicArn=topic_arn, Message="not json at all\nid: forged")
        event = status_event(version=7)
        SnsEventPublisher(topic_arn, sns).publish(event)
        received = stream.wait_for(lambda e: e.event != "heartbeat")
    assert received.id == event.id


def test_each_relay_makes_its_own_queue_and_removes_it_when_it_stops(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs, sns = moto_endpoint.client("sqs"), moto_endpoint.client("sns")
    relay = start_relay(RELAY_TASK_ID="task-one")
    queues = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-one").get("QueueUrls", [])
    assert len(queues) == 1
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions] == ["cmlfleet-relay-task-one"]
    attributes = sns.get_subscription_attributes(
        SubscriptionArn=subscriptions[0]["SubscriptionArn"]
    )["Attributes"]
    assert attributes["RawMessageDelivery"] == "true"

    assert relay.stop() == 0
    assert sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-one").get("QueueUrls", []) == []
    assert sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"] == []


def test_two_relays_on_one_bus_both_deliver_every_event(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    first, second = start_relay(), start_relay()
    publisher = SnsEventPublisher(topic_arn, moto_endpoint.client("sns"))
    with (
        SseStream(f"{first.url}/api/events/stream") as one,
        SseStream(f"{second.url}/api/events/stream") as two,
    ):
        one.next(), two.next()
        sent = [status_event(version=v) for v in (2, 3, 4)]
        for event in sent:
            publisher.publish(event)
        for stream in (one, two):
            got = stream.collect(3, event_type="worker.status.updated")
            assert sorted(e.id for e in got) == [e.id for e in sent]


def test_on_sigterm_clients_are_told_to_reconnect_later_and_the_relay_exits(
    start_relay: RelayFactory,
) -> None:
    relay = start_relay(RELAY_SHUTDOWN_MIN_MS="800", RELAY_SHUTDOWN_MAX_MS="1600")
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        assert relay.process is not None
        relay.process.send_signal(signal.SIGTERM)
        goodbye = stream.wait_for(lambda e: e.event == "system.sse.shutdown", timeout=10)
        assert stream.closed.wait(10), "the relay should end the stream after saying goodbye"
    delay = goodbye.json()["reconnect_after_ms"]
    assert 800 <= delay <= 1600
    assert goodbye.retry == delay
    assert goodbye.id is None
    assert relay.process.wait(15) == 0


def test_a_relay_with_bad_settings_says_what_is_wrong_and_exits_2() -> None:
    environment = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "TOPIC_ARN": "not-an-arn",
        "HEARTBEAT_SECONDS": "-1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "relay"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "TOPIC_ARN" in result.stderr
    assert "HEARTBEAT_SECONDS" in result.stderr
    assert "Traceback" not in result.stderr


def test_shutdown_jitter_settings_must_form_a_range() -> None:
    result = run_relay_with(
        {
            "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t",
            "RELAY_SHUTDOWN_MIN_MS": "6000",
            "RELAY_SHUTDOWN_MAX_MS": "5000",
        }
    )
    assert result.returncode == 2
    assert "RELAY_SHUTDOWN_MIN_MS must not exceed RELAY_SHUTDOWN_MAX_MS" in result.stderr


def run_relay_with(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": PYTHONPATH, **settings}
    return subprocess.run(
        [sys.executable, "-m", "relay"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_queue_of_a_killed_relay_is_removed_by_the_reaper(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs, sns = moto_endpoint.client("sqs"), moto_endpoint.client("sns")
    killed = start_relay(RELAY_TASK_ID="task-killed")
    assert killed.process is not None
    killed.process.kill()  # no goodbye, no cleanup
    killed.process.wait(10)
    survivor = start_relay(RELAY_TASK_ID="task-alive")
    assert len(sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-")["QueueUrls"]) == 2

    result = reap_relay_queues(
        sqs,
        sns,
        topic_arn=topic_arn,
        prefix="cmlfleet-relay-task-killed",
        stale_after=600,
        now=time.time() + 3600,  # an hour later, the dead one never beat again
    )

    assert [url.rsplit("/", 1)[-1] for url in result.deleted] == ["cmlfleet-relay-task-killed"]
    names = [
        u.rsplit("/", 1)[-1]
        for u in sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-")["QueueUrls"]
    ]
    assert names == ["cmlfleet-relay-task-alive"]
    assert survivor.stop() == 0
