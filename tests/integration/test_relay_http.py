"""The relay over real HTTP: a `python -m relay` process under uvicorn, fed by moto SNS/SQS."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.services.reaper import reap_relay_queues
from devstack.relayproc import PYTHONPATH, RelayProcess
from devstack.stack import LOCAL_ENVIRONMENT, free_port
from relay.bus import TOPIC_TAG
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
    relay = start_relay(RELAY_TASK_ID="task-one-1234567")
    (queue,) = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-one").get("QueueUrls", [])
    assert queue.rsplit("/", 1)[-1] == "cmlfleet-relay-task-one-1234567"
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions] == [
        "cmlfleet-relay-task-one-1234567"
    ]
    attributes = sns.get_subscription_attributes(
        SubscriptionArn=subscriptions[0]["SubscriptionArn"]
    )["Attributes"]
    assert attributes["RawMessageDelivery"] == "true"

    assert relay.stop() == 0
    assert sqs.list_queues(QueueNamePrefix="cmlfleet-relay-task-one").get("QueueUrls", []) == []
    assert sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"] == []


def test_a_relay_queue_is_tagged_with_its_topic_its_role_and_a_heartbeat(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    sqs = moto_endpoint.client("sqs")
    start_relay(RELAY_TASK_ID="0123456789abcdef")
    (queue,) = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-0123456789abcdef")["QueueUrls"]
    tags = sqs.list_queue_tags(QueueUrl=queue)["Tags"]
    assert tags[TOPIC_TAG] == topic_arn  # the reaper's way to tell its stack's queues
    assert tags["cmlfleet:role"] == "relay"
    assert abs(float(tags["cmlfleet:heartbeat"]) - time.time()) < 120


def test_without_a_task_id_a_relay_names_its_queue_with_16_random_hex_characters(
    start_relay: RelayFactory, moto_endpoint: MotoEndpoint
) -> None:
    sqs = moto_endpoint.client("sqs")
    start_relay(RELAY_QUEUE_PREFIX="cmlfleet-relay-anon")
    (queue,) = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-anon-")["QueueUrls"]
    task_id = queue.rsplit("/", 1)[-1].removeprefix("cmlfleet-relay-anon-")
    assert len(task_id) == 16
    assert set(task_id) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "task_id",
    ["task-one", "task-one-12345678", "Task-One-1234567", "task_one_1234567", "task one 123456"],
)
def test_a_task_id_that_is_not_16_of_a_to_z_0_to_9_and_dashes_is_refused(task_id: str) -> None:
    result = run_relay_with(
        {"TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t", "RELAY_TASK_ID": task_id}
    )
    assert result.returncode == 2
    assert "RELAY_TASK_ID" in result.stderr
    assert "Traceback" not in result.stderr


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
    # The metrics server went down with it (it is not left holding the port).
    with pytest.raises(httpx.ConnectError):
        httpx.get(relay.metrics_url, timeout=5)


def test_liveness_answers_alive_and_nothing_more(start_relay: RelayFactory) -> None:
    relay = start_relay()
    live = httpx.get(f"{relay.url}/api/events/live", timeout=5)
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    # (That it stays 200 while /api/events/health is 503: test_relay_draining.py.)


def test_metrics_are_served_on_their_own_port_and_not_on_the_routed_one(
    start_relay: RelayFactory,
) -> None:
    relay = start_relay()
    with SseStream(f"{relay.url}/api/events/stream") as stream:
        stream.next()
        scrape = httpx.get(relay.metrics_url, timeout=5)
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "cmlfleet_relay_clients 1" in scrape.text.splitlines()
    assert "cmlfleet_relay_connects_total 1" in scrape.text.splitlines()
    base = urlsplit(relay.url)
    for path in [
        "/api/events/metrics",
        "/api/events/%6detrics",  # what a path rule matching one spelling may let through
        "/api/events/%6D%65trics",
        "/api/events//metrics",
        "/metrics",
    ]:
        status, body = raw_get(base.hostname or "", base.port or 0, path)
        assert status == 404, path
        assert b"cmlfleet_relay" not in body, path
    assert httpx.get(relay.metrics_url.removesuffix("/metrics") + "/", timeout=5).status_code == 404


def raw_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (HTTP clients may normalise percent-escapes)."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_relay_whose_metrics_port_is_taken_does_not_start(
    moto_endpoint: MotoEndpoint, topic_arn: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        relay = RelayProcess(
            {
                **LOCAL_ENVIRONMENT,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": moto_endpoint.url,
                "TOPIC_ARN": topic_arn,
                "RELAY_ANONYMOUS_ROLE": "admin",
            },
            port=free_port(),
            metrics_port=taken,
        )
        with pytest.raises(RuntimeError, match="exited with code"):
            relay.start()
    assert relay.process is not None
    assert relay.process.returncode != 0


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


def test_the_metrics_port_must_not_be_the_relays_port() -> None:
    result = run_relay_with(
        {
            "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t",
            "RELAY_ANONYMOUS_ROLE": "admin",
            "RELAY_PORT": "8080",
            "RELAY_METRICS_PORT": "8080",
        }
    )
    assert result.returncode == 2
    assert "RELAY_METRICS_PORT must differ from RELAY_PORT" in result.stderr


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
    # Their own prefixes, so that reaping "an hour later" can spare the survivor.
    killed = start_relay(RELAY_QUEUE_PREFIX="cmlfleet-dead", RELAY_TASK_ID="task-dead-123456")
    assert killed.process is not None
    killed.process.kill()  # no goodbye, no cleanup
    killed.process.wait(10)
    survivor = start_relay(RELAY_QUEUE_PREFIX="cmlfleet-alive", RELAY_TASK_ID="task-alive-12345")
    assert len(sqs.list_queues(QueueNamePrefix="cmlfleet-")["QueueUrls"]) == 2

    result = reap_relay_queues(
        sqs,
        sns,
        topic_arn=topic_arn,
        prefix="cmlfleet-dead",
        stale_after=600,
        now=time.time() + 3600,  # an hour later, the dead one never beat again
    )

    assert [url.rsplit("/", 1)[-1] for url in result.deleted] == ["cmlfleet-dead-task-dead-123456"]
    names = [
        u.rsplit("/", 1)[-1] for u in sqs.list_queues(QueueNamePrefix="cmlfleet-")["QueueUrls"]
    ]
    assert names == ["cmlfleet-alive-task-alive-12345"]
    assert survivor.stop() == 0
