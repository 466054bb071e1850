"""Hostile credentials on the event stream: forged tokens and misused tickets, over HTTP.

test_relay_auth.py covers no credentials, an expired token, another audience, another
issuer, and a ticket used twice by its owner. Here: every other forged token the API
refuses, and tickets that are expired, stolen, raced or garbage. Each refusal is a 401
JSON answer (EventSource then gives up instead of retrying), and no stream is opened.
Garbage replay cursors, last, get a resync rather than a broken stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from moto import mock_aws

from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.identity import Principal, Role, StaticSigningKeys, TokenVerifier
from devstack.issuer import DevelopmentIssuer
from relay.auth import StreamAuthenticator
from relay.history import DynamoDbEventLog
from tests.api.test_authentication import REFUSED_TOKENS, TokenMaker
from tests.conftest import FleetAws
from tests.integration.test_relay_auth import created
from tests.integration.test_relay_backpressure import RelayThread
from tests.sse_client import SseStream

ISSUER = "https://issuer.test/pool"
# test_relay_auth.py already sends these to the relay.
COVERED = {"expired", "another audience", "another issuer"}
FORGED = [token for token in REFUSED_TOKENS if token.id not in COVERED]


TICKET_REFUSED = "ticket unknown, used or expired; get a new one"


class SecureRelay:
    """A relay that takes tickets and bearer tokens, with its ticket store and issuer."""

    def __init__(self, tickets: DynamoDbTicketStore, event_log: DynamoDbEventLog) -> None:
        self.issuer = DevelopmentIssuer(ISSUER, audience="cmlfleet-tests")
        self.verifier = TokenVerifier(
            issuer=ISSUER, audience="cmlfleet-tests", keys=StaticSigningKeys(self.issuer.jwks())
        )
        self.tickets = tickets
        authenticator = StreamAuthenticator(verifier=self.verifier, tickets=tickets)
        # Frequent heartbeats let a test's reader notice its own close quickly.
        self.relay = RelayThread(authenticator, heartbeat_seconds=0.5)
        self.relay.relay.event_log = event_log  # replay beyond the ring, as deployed
        self.relay.start()
        self.url = f"{self.relay.url}/api/events/stream"

    def ticket(self, user: str, role: str, *, issued_ago: float = 0, **claims: Any) -> str:
        """A ticket as POST /api/events/tickets would issue it for this user's token."""
        principal = self.verifier.verify(self.issuer.token(user, role, **claims))
        return self.tickets.issue(principal, now=time.time() - issued_ago).ticket

    def rejected(self) -> int:
        stats: dict[str, int] = self.relay.health()["stats"]
        return stats.get("rejected_unauthenticated", 0)


@pytest.fixture(scope="module")
def secure() -> Iterator[SecureRelay]:
    """One relay for the module (moto's table and the uvicorn thread take a while)."""
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        aws = FleetAws()
        for name, value in aws.environment().items():
            patch.setenv(name, value)
        secure = SecureRelay(
            DynamoDbTicketStore(aws.table_name, aws.dynamodb),
            DynamoDbEventLog(aws.table_name, aws.dynamodb),
        )
        try:
            yield secure
        finally:
            secure.relay.stop()


def refused(response: httpx.Response) -> str:
    """The reason of a 401 from the stream, after checking it is the JSON refusal."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body = response.json()
    assert body["error"]["code"] == "unauthorized"
    reason: str = body["error"]["message"]
    return reason


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)


# ---- bearer tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize(("make_token", "why"), FORGED)
def test_a_forged_bearer_token_opens_no_stream(
    secure: SecureRelay, make_token: TokenMaker, why: str
) -> None:
    before = secure.rejected()

    response = get(secure.url, headers={"Authorization": f"Bearer {make_token(secure.issuer)}"})

    assert why in refused(response).lower()
    assert secure.rejected() == before + 1
    assert secure.relay.relay.hub.client_count == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Basic YWRhOnNlY3JldA==", "Bearer a.b.c", "Bearer " + "a" * 50_000],
)
def test_a_malformed_authorization_header_opens_no_stream(
    secure: SecureRelay, authorization: str
) -> None:
    refused(get(secure.url, headers={"Authorization": authorization}))


# ---- tickets ------------------------------------------------------------------------------------
def test_an_expired_ticket_opens_no_stream(secure: SecureRelay) -> None:
    ticket = secure.ticket("alice", "user", issued_ago=120)  # a 60 s ticket, 2 minutes old

    assert refused(get(secure.url, params={"ticket": ticket})) == TICKET_REFUSED


def test_a_ticket_used_by_its_owner_opens_nothing_for_another_user(secure: SecureRelay) -> None:
    ticket = secure.ticket("alice", "user")
    with SseStream(f"{secure.url}?ticket={ticket}") as alice:
        assert alice.next().event == "connected"
    bob = {"Authorization": f"Bearer {secure.issuer.token('bob', 'admin')}"}

    # Bob's own token is good, but a spent ticket is refused before anything else.
    assert refused(get(secure.url, params={"ticket": ticket}, headers=bob)) == TICKET_REFUSED
    assert refused(get(secure.url, params={"ticket": ticket})) == TICKET_REFUSED


def test_a_stolen_ticket_speaks_for_its_owner_never_for_who_presents_it(
    secure: SecureRelay,
) -> None:
    """Bob (an admin) presents alice's ticket with his own token: he gets alice's view only."""
    ticket = secure.ticket("alice", "user")
    bob = {"Authorization": f"Bearer {secure.issuer.token('bob', 'admin')}"}
    theirs, mine = created("carol", "w-cccc"), created("alice", "w-aaaa")
    with SseStream(f"{secure.url}?ticket={ticket}", headers=bob) as stream:
        assert stream.next().event == "connected"
        secure.relay.publish([theirs, mine])
        got = stream.wait_for(lambda e: e.event == "worker.created")

    assert got.id == mine.id  # carol's event never reached this stream
    assert got.json()["data"]["worker"]["instance_id"] is None  # masked as for a user
    assert refused(get(secure.url, params={"ticket": ticket})) == TICKET_REFUSED  # spent


def test_two_clients_racing_with_one_ticket_get_one_stream(secure: SecureRelay) -> None:
    ticket = secure.ticket("alice", "user")
    start = threading.Barrier(4)
    statuses: list[int] = []

    def connect() -> None:
        start.wait()
        with httpx.stream("GET", secure.url, params={"ticket": ticket}, timeout=10) as response:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    assert sorted(statuses) == [200, 401, 401, 401]


def test_a_ticket_of_a_token_about_to_expire_ends_the_stream_with_it(
    secure: SecureRelay,
) -> None:
    ticket = secure.ticket("alice", "user", exp=int(time.time()) + 2)

    with SseStream(f"{secure.url}?ticket={ticket}") as stream:
        assert stream.next().event == "connected"
        assert stream.wait_for(lambda e: e.event == "auth.expired", timeout=10)
        assert stream.closed.wait(10)


@pytest.mark.parametrize(
    "ticket",
    [
        pytest.param("x" * 10_000, id="10k characters"),
        pytest.param("%00", id="NUL"),
        pytest.param("%ed%a0%80", id="a UTF-8 surrogate"),
        pytest.param("%c0%af", id="overlong UTF-8"),
        pytest.param("%ff%fe", id="not UTF-8"),
        pytest.param("TICKET%23", id="the item's key prefix"),
        pytest.param("' OR 1=1 --", id="an injection"),
    ],
)
def test_a_garbage_ticket_is_refused_cleanly(secure: SecureRelay, ticket: str) -> None:
    assert refused(get(f"{secure.url}?ticket={ticket}")) == TICKET_REFUSED


def test_a_principal_with_a_past_expiry_cannot_be_issued_a_usable_ticket(
    secure: SecureRelay,
) -> None:
    """A ticket never outlives its token: one traded for a dead token is dead too."""
    dead = Principal("sub-alice", "alice", Role.USER, int(time.time()) - 1)
    ticket = secure.tickets.issue(dead).ticket

    assert refused(get(secure.url, params={"ticket": ticket})) == TICKET_REFUSED


# ---- replay cursors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("x" * 10_000, id="10k characters"),
        pytest.param("%00", id="NUL"),
        pytest.param("%ff%fe", id="not UTF-8"),
        pytest.param("ffffffff-ffff-7fff-bfff-ffffffffffff", id="a UUIDv7 in year 10889"),
        pytest.param("00000000-0000-7000-8000-000000000000", id="a UUIDv7 in 1970"),
        pytest.param("01a22b14-6808-7045-a30f-3af54113806b", id="a UUIDv7 never issued"),
        pytest.param("EVENTS%23", id="the log's key prefix"),
    ],
)
def test_a_garbage_replay_cursor_gets_a_resync_not_a_broken_stream(
    secure: SecureRelay, cursor: str
) -> None:
    token = {"Authorization": f"Bearer {secure.issuer.token('ada', 'admin')}"}

    with SseStream(f"{secure.url}?last_event_id={cursor}", headers=token) as stream:
        connected = stream.next()
        resync = stream.next()

    assert connected.event == "connected"
    assert connected.json()["replay"]["status"] == "resync"
    assert resync.event == "resync"
