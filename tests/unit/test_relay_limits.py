"""The relay's per-client limits on their own, and the capped replay reads (finding M1)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cmlfleet.adapters.repository import hour_partition
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.ids import first_uuid7_at
from relay.history import DynamoDbEventLog, EventRing, TooManyMissedError
from relay.limits import Allowance, BoundedExecutor, BusyError, StreamCounts, client_address
from relay.settings import RelaySettings
from tests.conftest import FleetAws
from tests.integration.conftest import status_event

TOPIC = "arn:aws:sns:us-east-1:123456789012:events"


class CountingClient:
    """A DynamoDB client that counts the queries made and the items they returned."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.queries = 0
        self.items_read = 0
        self.requests: list[dict[str, Any]] = []

    def query(self, **request: Any) -> Any:
        self.queries += 1
        self.requests.append(request)
        response = self._client.query(**request)
        self.items_read += len(response.get("Items", []))
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def logged(fleet_aws: FleetAws, count: int) -> list[CloudEvent]:
    """`count` events written to the event log as the outbox writes them."""
    events = [status_event(n + 1, worker_id=f"w-{n % 7}", owner="bob") for n in range(count)]
    for event in events:
        fleet_aws.dynamodb.put_item(
            TableName=fleet_aws.table_name,
            Item={
                "pk": {"S": hour_partition(event.time)},
                "sk": {"S": event.id},
                "event": {"S": event.to_json()},
            },
        )
    return events


def test_m1_the_ring_walks_back_no_further_than_the_cap() -> None:
    ring = EventRing(1000)
    events = [status_event(n, owner="bob") for n in range(1, 301)]
    for event in events:
        ring.add(event)
    assert ring.after(events[-101].id, 100) == events[-100:]
    with pytest.raises(TooManyMissedError):
        ring.after(events[-102].id, 100)
    assert ring.after("not-there", 100) is None


def test_m1_the_log_stops_reading_once_the_cap_is_passed(fleet_aws: FleetAws) -> None:
    events = logged(fleet_aws, 60)
    client = CountingClient(fleet_aws.dynamodb)
    log = DynamoDbEventLog(fleet_aws.table_name, client, max_events=10)
    now = datetime.now(UTC)
    with pytest.raises(TooManyMissedError):
        log.after(events[0].id, now)
    # One more than the cap is enough to know; the 49 others were never read.
    assert client.items_read == 11
    assert all(r["ProjectionExpression"] == "#event" for r in client.requests)
    client.items_read = 0
    assert log.after(events[-11].id, now) == events[-10:]
    assert client.items_read <= 11


def test_m1_a_cursor_older_than_the_max_age_costs_no_read(fleet_aws: FleetAws) -> None:
    client = CountingClient(fleet_aws.dynamodb)
    log = DynamoDbEventLog(fleet_aws.table_name, client, max_age=timedelta(hours=24))
    now = datetime.now(UTC)
    six_days_old = first_uuid7_at(now - timedelta(days=6))
    assert log.after(six_days_old, now) is None
    assert client.queries == 0


def test_m1_the_log_refuses_a_cursor_its_caller_does_not_admit(fleet_aws: FleetAws) -> None:
    events = logged(fleet_aws, 3)
    client = CountingClient(fleet_aws.dynamodb)
    log = DynamoDbEventLog(fleet_aws.table_name, client)
    now = datetime.now(UTC)
    assert log.after(events[0].id, now, admit_cursor=lambda e: e.owner == "alice") is None
    assert client.queries == 0
    assert log.after(events[0].id, now, admit_cursor=lambda e: e.owner == "bob") == events[1:]


def test_m1_stream_counts_admit_up_to_the_cap_and_release() -> None:
    counts = StreamCounts(2)
    assert [counts.admit("alice") for _ in range(3)] == [True, True, False]
    assert counts.admit("bob")
    counts.release("alice")
    assert counts.admit("alice")
    for _ in range(2):
        counts.release("alice")
    counts.release("bob")
    assert len(counts) == 0  # nothing kept for principals without a stream


def test_m1_an_allowance_refills_over_a_minute() -> None:
    now = [0.0]
    allowance = Allowance(6, clock=lambda: now[0])
    assert [allowance.take("alice") for _ in range(7)] == [True] * 6 + [False]
    assert allowance.take("bob")
    now[0] += 10  # one replay's worth (6 a minute)
    assert [allowance.take("alice"), allowance.take("alice")] == [True, False]


def test_m1_an_allowance_with_a_smaller_burst_gives_that_many_at_once_then_its_rate() -> None:
    now = [0.0]
    allowance = Allowance(600, burst=3, clock=lambda: now[0])
    assert [allowance.take("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1  # 600 a minute is one every 0.1 s
    assert [allowance.take("10.0.0.1"), allowance.take("10.0.0.1")] == [True, False]


def test_m1_a_bounded_executor_refuses_work_beyond_its_queue_at_once() -> None:
    async def scenario() -> None:
        executor = BoundedExecutor("test", threads=1, max_waiting=1)
        release = threading.Event()
        running = [asyncio.create_task(executor.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(BusyError):
            await executor.run(lambda: True)
        release.set()
        assert await asyncio.gather(*running) == [True, True]
        assert await executor.run(lambda: 42) == 42
        executor.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("forwarded", "hops", "expected"),
    [
        ("", 0, "10.0.0.9"),
        ("203.0.113.7", 0, "10.0.0.9"),  # no proxy trusted: the header is the client's word
        ("203.0.113.7", 1, "203.0.113.7"),
        ("198.51.100.1, 203.0.113.7", 1, "203.0.113.7"),
        ("203.0.113.7", 2, "10.0.0.9"),  # fewer entries than proxies: not ours
    ],
)
def test_m1_the_client_address_is_the_one_the_trusted_proxy_saw(
    forwarded: str, hops: int, expected: str
) -> None:
    assert client_address(("10.0.0.9", 5000), forwarded, hops) == expected


def test_l3_anonymous_access_is_refused_with_an_issuer_or_on_ecs() -> None:
    with pytest.raises(ValueError, match="development only"):
        RelaySettings(
            topic_arn=TOPIC,
            relay_anonymous_role="admin",
            oidc_issuer="https://issuer.example/pool",
            oidc_audience="client",
        )
    with pytest.raises(ValueError, match="development only"):
        RelaySettings(
            topic_arn=TOPIC,
            relay_anonymous_role="admin",
            ecs_container_metadata_uri_v4="http://169.254.170.2/v4/abc",
        )
    assert RelaySettings(topic_arn=TOPIC, relay_anonymous_role="admin").relay_anonymous_role


@pytest.mark.parametrize("name", ["oidc_issuer", "oidc_jwks_url"])
def test_l6_the_relay_fetches_keys_over_https_only_except_on_loopback(name: str) -> None:
    identity = {"oidc_issuer": "https://issuer.example/pool", "oidc_audience": "client"}
    with pytest.raises(ValueError, match="https"):
        RelaySettings(topic_arn=TOPIC, **(identity | {name: "http://issuer.example/pool"}))
    local = RelaySettings(topic_arn=TOPIC, **(identity | {name: "http://127.0.0.1:9000/x"}))
    assert getattr(local, name) == "http://127.0.0.1:9000/x"
