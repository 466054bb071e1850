"""What one client may cost the relay (security findings M1, L1, L2, L3, L8), over real HTTP.

A `user` token reconnecting with old cursors, opening stream after stream, or sending
garbage tickets must not slow the relay down for everyone else: each is answered cheaply
(`resync`, 429, 401) and nothing it may not see is framed for it. The hostile-client
benchmark (`make bench-hostile`) measures the effect on 1,000 honest clients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.identity import StaticSigningKeys, TokenVerifier
from devstack.issuer import DevelopmentIssuer
from relay import app as relay_app
from relay import stream as relay_stream
from relay.auth import StreamAuthenticator
from relay.hub import Delivery
from tests.integration.test_relay_auth import bearer, status
from tests.integration.test_relay_backpressure import RelayThread
from tests.sse_client import SseStream

ISSUER = "https://issuer.test/pool"


class CountingDynamoDb:
    """A DynamoDB client that counts its calls and knows no ticket (every condition fails)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(**_: Any) -> Any:
            self.calls.append(name)
            error = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}
            raise ClientError(error, name)  # type: ignore[arg-type]

        return call


@pytest.fixture
def issuer() -> DevelopmentIssuer:
    return DevelopmentIssuer(ISSUER, audience="cmlfleet-tests")


@pytest.fixture
def dynamodb() -> CountingDynamoDb:
    return CountingDynamoDb()


@pytest.fixture
def start(
    issuer: DevelopmentIssuer, dynamodb: CountingDynamoDb
) -> Iterator[Callable[..., RelayThread]]:
    """Relays that take bearer tokens (and tickets, from a store that must not be asked)."""
    started: list[RelayThread] = []
    verifier = TokenVerifier(
        issuer=issuer.issuer, audience=issuer.audience, keys=StaticSigningKeys(issuer.jwks())
    )
    tickets = DynamoDbTicketStore("workers", dynamodb)

    def relay_with(**settings: Any) -> RelayThread:
        authenticator = StreamAuthenticator(verifier=verifier, tickets=tickets)
        relay = RelayThread(authenticator, heartbeat_seconds=0.5, **settings).start()
        started.append(relay)
        return relay

    yield relay_with
    for relay in started:
        relay.stop()


def stream_url(relay: RelayThread) -> str:
    return f"{relay.url}/api/events/stream"


def published(relay: RelayThread, events: list[CloudEvent]) -> None:
    relay.publish(events)
    relay.wait_for_health(lambda h: h["stats"].get("published", 0) >= len(events))


def bobs_events(count: int) -> list[CloudEvent]:
    return [status("bob", f"w-{n % 50:04d}", n + 1) for n in range(count)]


def connected(relay: RelayThread, headers: Any) -> dict[str, Any]:
    """The `replay` of a fresh stream's `connected` event (then the stream is closed)."""
    with SseStream(stream_url(relay), headers=headers) as stream:
        first = stream.next()
        assert first.event == "connected"
        replay: dict[str, Any] = first.json()["replay"]
        return replay


# ---- M1: replays are capped, filtered before framing, and rationed -----------------------


def test_m1_a_replay_of_events_the_client_may_not_see_frames_none_of_them(
    start: Callable[..., RelayThread],
    issuer: DevelopmentIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = start()
    events = bobs_events(3000)
    published(relay, events)
    framed: list[str] = []
    real_delivery = relay_stream.delivery

    def counting(event: CloudEvent) -> Delivery:
        framed.append(event.id)
        return real_delivery(event)

    monkeypatch.setattr(relay_stream, "delivery", counting)
    alice = bearer(issuer, "alice", "user") | {"Last-Event-ID": events[0].id}
    assert connected(relay, alice) == {
        "requested": events[0].id,
        "status": "resync",  # bob's event is not one alice could have been sent (L1)
        "replayed": 0,
    }
    admin = bearer(issuer, "carol", "admin") | {"Last-Event-ID": events[-11].id}
    assert connected(relay, admin)["replayed"] == 10
    # Only the admin's ten were framed: alice's replay decided on the events themselves.
    assert framed == [event.id for event in events[-10:]]


def test_m1_a_ring_replay_beyond_the_cap_is_a_resync_not_a_replay(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(relay_replay_max=100)
    events = bobs_events(250)
    published(relay, events)
    admin = bearer(issuer, "carol", "admin")
    with SseStream(stream_url(relay), headers=admin | {"Last-Event-ID": events[0].id}) as old:
        assert old.next().json()["replay"]["status"] == "resync"
        resync = old.next()
        assert resync.event == "resync"
        assert "more events were missed than are replayed" in resync.json()["reason"]
    # Exactly at the cap is still a replay.
    assert connected(relay, admin | {"Last-Event-ID": events[-101].id}) == {
        "requested": events[-101].id,
        "status": "replayed",
        "replayed": 100,
    }


def test_m1_replaying_connects_beyond_the_allowance_get_resync(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(relay_replays_per_minute=3)
    events = [status("alice", "w-aaaa", n) for n in range(1, 6)]
    published(relay, events)
    alice = bearer(issuer, "alice", "user") | {"Last-Event-ID": events[0].id}
    outcomes = [connected(relay, alice)["status"] for _ in range(4)]
    assert outcomes == ["replayed", "replayed", "replayed", "resync"]
    # Another user's allowance is their own, and a connect without a cursor costs none.
    dave = bearer(issuer, "dave", "admin")
    assert connected(relay, dave | {"Last-Event-ID": events[0].id})["status"] == "replayed"
    assert connected(relay, bearer(issuer, "alice", "user"))["status"] == "none"
    assert relay.health()["stats"]["replays_refused_rate"] == 1


def test_m1_one_principal_holds_at_most_its_cap_of_streams(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(relay_streams_per_principal=2)
    alice = bearer(issuer, "alice", "user")
    with (
        SseStream(stream_url(relay), headers=alice) as one,
        SseStream(stream_url(relay), headers=alice) as two,
    ):
        assert one.next().event == two.next().event == "connected"
        third = httpx.get(stream_url(relay), headers=alice, timeout=5)
        assert third.status_code == 429
        assert third.headers["retry-after"] == "30"
        assert third.json()["error"]["code"] == "too_many_streams"
        # Someone else is not affected.
        assert connected(relay, bearer(issuer, "bob", "user"))["status"] == "none"
    # Closed streams are let go: alice may open one again.
    relay.wait_for_health(lambda h: h["clients"] == 0)
    assert connected(relay, alice)["status"] == "none"


def test_m1_one_address_holds_at_most_its_cap_and_the_balancers_header_names_it(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(relay_streams_per_address=2, relay_forwarded_hops=1)
    office = {"X-Forwarded-For": "203.0.113.7"}
    with SseStream(stream_url(relay), headers=bearer(issuer, "a", "user") | office) as one:
        assert one.next().event == "connected"
        with SseStream(stream_url(relay), headers=bearer(issuer, "b", "user") | office) as two:
            assert two.next().event == "connected"
            refused = httpx.get(
                stream_url(relay), headers=bearer(issuer, "c", "user") | office, timeout=5
            )
            assert refused.status_code == 429
            # What a client puts before the balancer's entry is its own word, not its address.
            spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
            again = httpx.get(
                stream_url(relay), headers=bearer(issuer, "c", "user") | spoofed, timeout=5
            )
            assert again.status_code == 429
            # Two header lines are one list: the balancer's entry is still the last.
            token = list(bearer(issuer, "c", "user").items())
            xff = "X-Forwarded-For"
            two_lines = [*token, (xff, "203.0.113.7"), (xff, "198.51.100.9")]
            assert connected(relay, two_lines)["status"] == "none"  # 198.51.100.9 is new
            hidden = [*token, (xff, "198.51.100.1"), (xff, "203.0.113.7")]
            assert httpx.get(stream_url(relay), headers=hidden, timeout=5).status_code == 429
            elsewhere = bearer(issuer, "c", "user") | {"X-Forwarded-For": "198.51.100.1"}
            assert connected(relay, elsewhere)["status"] == "none"


def test_m1_an_address_reconnecting_in_a_loop_is_refused_before_its_token_is_checked(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(
        relay_connects_per_address_per_minute=3,
        relay_connect_burst_per_address=3,
        relay_forwarded_hops=1,
        relay_refusal_delay_seconds=0,
    )
    loop = bearer(issuer, "mallory", "user") | {"X-Forwarded-For": "203.0.113.66"}
    assert [connected(relay, loop)["status"] for _ in range(3)] == ["none"] * 3
    before = relay.health()["stats"]
    refused = httpx.get(stream_url(relay), headers=loop, timeout=5)
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "5")
    assert refused.json()["error"]["code"] == "too_many_connects"
    after = relay.health()["stats"]
    assert after["rejected_connect_rate"] == 1
    assert after["connects"] == before["connects"]  # no stream, and no token check either
    other = bearer(issuer, "alice", "user") | {"X-Forwarded-For": "198.51.100.2"}
    assert connected(relay, other)["status"] == "none"


def test_m1_a_refused_connect_is_held_back_so_a_loop_over_few_connections_slows_down(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start(
        relay_connects_per_address_per_minute=1,
        relay_connect_burst_per_address=1,
        relay_refusal_delay_seconds=3,  # long enough for all forty to arrive meanwhile
    )
    alice = bearer(issuer, "alice", "user")
    assert connected(relay, alice)["status"] == "none"
    # Forty refused at once: 32 are held (the answer waits), the rest answered at once.
    with ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda _: httpx.get(stream_url(relay), headers=alice, timeout=10), range(40))
        )
    assert {answer.status_code for answer in answers} == {429}
    stats = relay.health()["stats"]
    assert stats["rejected_connect_rate"] == 40
    assert stats["refusals_held"] == 32
    assert relay.relay.refusals_held == {}  # nothing kept once they are answered


# ---- L1: `connected` says only what this client is sent ----------------------------------


def test_l1_a_cursor_the_client_could_not_have_seen_is_answered_like_an_unknown_one(
    start: Callable[..., RelayThread], issuer: DevelopmentIssuer
) -> None:
    relay = start()
    bobs = bobs_events(3)
    alices = [status("alice", "w-aaaa", 1)]
    published(relay, [*bobs, *alices])
    alice = bearer(issuer, "alice", "user")
    foreign = connected(relay, alice | {"Last-Event-ID": bobs[0].id})
    unknown = connected(relay, alice | {"Last-Event-ID": "0190a0a0-0000-7000-8000-000000000000"})
    assert {**foreign, "requested": None} == {**unknown, "requested": None}
    assert foreign["status"] == "resync"


# ---- L2: the public health check carries no counters; metrics are not on this port --------


def test_l2_health_says_only_its_status_and_no_encoded_path_reaches_metrics(
    start: Callable[..., RelayThread],
) -> None:
    relay = start()
    health = httpx.get(f"{relay.url}/api/events/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    for path in ("/api/events/metrics", "/api/events/%6detrics", "/metrics", "/%6detrics"):
        answer = httpx.get(f"{relay.url}{path}", timeout=5)
        assert answer.status_code == 404, path
        assert "cmlfleet_relay_" not in answer.text, path


# ---- L3: no anonymous default --------------------------------------------------------------


def test_l3_create_app_has_no_default_authenticator() -> None:
    parameter = inspect.signature(relay_app.create_app).parameters["authenticator"]
    assert parameter.default is inspect.Parameter.empty


# ---- L8: a malformed ticket costs no DynamoDB call ------------------------------------------


@pytest.mark.parametrize(
    "ticket",
    ["x", "a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "/", "a" * 128, "a" * 5000],
)
def test_l8_a_ticket_that_is_not_43_base64url_characters_is_refused_before_dynamodb(
    start: Callable[..., RelayThread], dynamodb: CountingDynamoDb, ticket: str
) -> None:
    relay = start()
    refused = httpx.get(stream_url(relay), params={"ticket": ticket}, timeout=5)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "ticket unknown, used or expired; get a new one"
    assert dynamodb.calls == []


def test_l8_a_well_formed_ticket_is_looked_up(
    start: Callable[..., RelayThread], dynamodb: CountingDynamoDb
) -> None:
    relay = start()
    answer = httpx.get(stream_url(relay), params={"ticket": "A" * 43}, timeout=5)
    assert answer.status_code == 401
    assert dynamodb.calls == ["delete_item"]
