"""Who may read the stream, and what each reader sees: over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.events.catalog import WorkerCreated, WorkerStatusUpdated
from cmlfleet.events.envelope import CloudEvent, make_event
from cmlfleet.identity import StaticSigningKeys, TokenVerifier
from devstack.issuer import DevelopmentIssuer
from relay.auth import StreamAuthenticator
from tests.conftest import FleetAws
from tests.integration.test_relay_backpressure import RelayThread
from tests.sse_client import SseStream

ISSUER = "https://issuer.test/pool"


@pytest.fixture
def issuer() -> DevelopmentIssuer:
    return DevelopmentIssuer(ISSUER, audience="cmlfleet-tests")


@pytest.fixture
def secure_relay(
    fleet_aws: FleetAws, issuer: DevelopmentIssuer
) -> Iterator[tuple[RelayThread, DynamoDbTicketStore]]:
    tickets = DynamoDbTicketStore(fleet_aws.table_name, fleet_aws.dynamodb)
    verifier = TokenVerifier(
        issuer=issuer.issuer, audience=issuer.audience, keys=StaticSigningKeys(issuer.jwks())
    )
    relay = RelayThread(StreamAuthenticator(verifier=verifier, tickets=tickets)).start()
    try:
        yield relay, tickets
    finally:
        relay.stop()


def bearer(issuer: DevelopmentIssuer, user: str, role: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(user, role, **claims)}"}


def created(owner: str, worker_id: str) -> CloudEvent:
    view = {
        "worker_id": worker_id,
        "name": f"lab of {owner}",
        "owner": owner,
        "status": "running",
        "instance_id": "i-0123456789abcdef0",
        "ami_id": "ami-0123456789abcdef0",
        "private_ip": "10.0.0.9",
        "region": "us-east-1",
        "tags": {"Name": "x"},
        "created_at": "2026-11-30T10:00:00Z",
        "updated_at": "2026-11-30T10:00:00Z",
        "version": 1,
    }
    return make_event(
        WorkerCreated.model_validate({"worker": view}), worker_id=worker_id, version=1, owner=owner
    )


def status(owner: str, worker_id: str, version: int, owner_sub: str | None = None) -> CloudEvent:
    payload = WorkerStatusUpdated(
        worker_id=worker_id,
        old_status="running",
        new_status="stopping",
        ec2_state=None,
        transition_started_at=None,
    )
    return make_event(
        payload, worker_id=worker_id, version=version, owner=owner, owner_sub=owner_sub
    )


Relay = tuple[RelayThread, DynamoDbTicketStore]


def test_a_client_without_credentials_is_refused(secure_relay: Relay) -> None:
    relay, _ = secure_relay
    response = httpx.get(f"{relay.url}/api/events/stream", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "claims", [{"aud": "other"}, {"exp": int(time.time()) - 600}, {"iss": "https://evil.test"}]
)
def test_a_bad_token_is_refused(
    secure_relay: Relay, issuer: DevelopmentIssuer, claims: dict[str, Any]
) -> None:
    relay, _ = secure_relay
    response = httpx.get(
        f"{relay.url}/api/events/stream",
        headers=bearer(issuer, "ada", "admin", **claims),
        timeout=10,
    )
    assert response.status_code == 401


def test_a_user_sees_only_their_workers_with_aws_fields_masked_and_an_admin_sees_all(
    secure_relay: Relay, issuer: DevelopmentIssuer
) -> None:
    relay, _ = secure_relay
    mine, theirs = created("alice", "w-aaaa"), created("bob", "w-bbbb")
    with (
        SseStream(
            f"{relay.url}/api/events/stream", headers=bearer(issuer, "alice", "user")
        ) as alice,
        SseStream(f"{relay.url}/api/events/stream", headers=bearer(issuer, "ada", "admin")) as ada,
    ):
        alice.next(), ada.next()
        relay.publish([theirs, mine])
        alice_got = alice.wait_for(lambda e: e.event == "worker.created")
        ada_got = ada.collect(2, event_type="worker.created")
    assert alice_got.id == mine.id  # bob's came first and was never sent to alice
    assert alice_got.json()["data"]["worker"]["instance_id"] is None
    assert alice_got.json()["data"]["worker"]["private_ip"] is None
    assert [e.id for e in ada_got] == [theirs.id, mine.id]
    assert ada_got[1].json()["data"]["worker"]["instance_id"] == "i-0123456789abcdef0"


def test_replay_is_filtered_for_the_reader_too(
    secure_relay: Relay, issuer: DevelopmentIssuer
) -> None:
    relay, _ = secure_relay
    cursor_event = status("alice", "w-aaaa", 2)
    missed = [status("bob", "w-bbbb", 3), status("alice", "w-aaaa", 4)]
    relay.publish([cursor_event, *missed])
    relay.wait_for_health(lambda h: h["stats"].get("published", 0) >= 3)
    headers = bearer(issuer, "alice", "user") | {"Last-Event-ID": cursor_event.id}
    with SseStream(f"{relay.url}/api/events/stream", headers=headers) as alice:
        # What alice is sent, not how many events happened (L1: bob's is not counted).
        assert alice.next().json()["replay"]["replayed"] == 1
        got = alice.wait_for(lambda e: e.event == "worker.status.updated")
    assert got.id == missed[1].id


def test_a_ticket_opens_the_stream_once(secure_relay: Relay, issuer: DevelopmentIssuer) -> None:
    relay, tickets = secure_relay
    verifier = TokenVerifier(
        issuer=issuer.issuer, audience=issuer.audience, keys=StaticSigningKeys(issuer.jwks())
    )
    issued = tickets.issue(verifier.verify(issuer.token("alice", "user")))
    url = f"{relay.url}/api/events/stream?ticket={issued.ticket}"
    with SseStream(url) as stream:
        assert stream.next().event == "connected"
    assert httpx.get(url, timeout=10).status_code == 401


def test_when_the_token_expires_the_client_is_told_and_the_stream_ends(
    secure_relay: Relay, issuer: DevelopmentIssuer
) -> None:
    relay, _ = secure_relay
    headers = bearer(issuer, "ada", "admin", exp=int(time.time()) + 2)
    with SseStream(f"{relay.url}/api/events/stream", headers=headers) as stream:
        assert stream.next().event == "connected"
        assert stream.wait_for(lambda e: e.event == "auth.expired", timeout=15)
        assert stream.closed.wait(10)


def test_l6_a_new_user_given_an_old_name_gets_none_of_the_old_owners_events(
    secure_relay: Relay, issuer: DevelopmentIssuer
) -> None:
    relay, _ = secure_relay
    first = status("bob", "w-bbbb", 1, owner_sub="sub-of-the-first-bob")
    old_bobs = [status("bob", "w-bbbb", 2, owner_sub="sub-of-the-first-bob")]
    relay.publish([first])
    relay.wait_for_health(lambda h: h["stats"].get("published", 0) >= 1)
    new_bob = bearer(issuer, "bob", "user", sub="sub-of-the-second-bob")
    old_bob = bearer(issuer, "bob", "user", sub="sub-of-the-first-bob")
    with (
        SseStream(f"{relay.url}/api/events/stream", headers=new_bob) as new,
        SseStream(f"{relay.url}/api/events/stream", headers=old_bob) as old,
    ):
        assert new.next().event == old.next().event == "connected"
        new_bobs = [status("bob", "w-cccc", 1, owner_sub="sub-of-the-second-bob")]
        relay.publish(old_bobs + new_bobs)
        assert old.wait_for(lambda e: e.event == "worker.status.updated").id == old_bobs[0].id
        # The first event the new bob gets is his own; from the old one's id, resync.
        assert new.wait_for(lambda e: e.event == "worker.status.updated").id == new_bobs[0].id
    replayed = SseStream(
        f"{relay.url}/api/events/stream", headers=new_bob | {"Last-Event-ID": first.id}
    )
    with replayed as again:
        assert again.next().json()["replay"]["status"] == "resync"
