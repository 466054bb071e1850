"""Stream tickets: a bearer token traded for a short-lived, single-use ticket for the URL."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jwt
import pytest

from cmlfleet.adapters.tickets import TICKET_PK_PREFIX, DynamoDbTicketStore
from cmlfleet.identity import Principal, Role
from tests.api.conftest import Api

TTL_SECONDS = 60  # the api fixture's ticket store


def token_claims(headers: dict[str, str]) -> dict[str, Any]:
    token = headers["Authorization"].removeprefix("Bearer ")
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def table_items(api: Api) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in api.aws.dynamodb.get_paginator("scan").paginate(TableName=api.aws.table_name):
        items.extend(page["Items"])
    return items


def ticket_items(api: Api) -> list[dict[str, Any]]:
    return [item for item in table_items(api) if item["kind"]["S"] == "ticket"]


def store(api: Api) -> DynamoDbTicketStore:
    return api.container.tickets


def principal(expires_in: int = 3600) -> Principal:
    return Principal("sub-alice", "alice", Role.USER, int(time.time()) + expires_in)


# ---- POST /api/events/tickets --------------------------------------------------------------
@pytest.mark.parametrize("role", ["admin", "manager", "user"])
def test_any_role_gets_a_ticket_that_expires_within_a_minute(api: Api, role: str) -> None:
    headers = api.headers("someone", role)
    before = int(time.time())

    response = api.client.post("/api/events/tickets", headers=headers)

    after = int(time.time())
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"ticket", "expires_at", "stream_url"}
    assert len(body["ticket"]) >= 32
    assert before + TTL_SECONDS <= body["expires_at"] <= after + TTL_SECONDS
    assert body["expires_at"] <= token_claims(headers)["exp"]


def test_the_stream_url_carries_the_url_quoted_ticket(api: Api) -> None:
    body = api.client.post("/api/events/tickets", headers=api.user()).json()

    url = urlsplit(body["stream_url"])

    assert url.path == "/api/events/stream"
    assert f"ticket={quote(body['ticket'])}" in body["stream_url"]
    assert parse_qs(url.query) == {"ticket": [body["ticket"]]}


def test_a_ticket_never_outlives_the_token_it_was_traded_for(api: Api) -> None:
    headers = api.headers("alice", "user", lifetime=20)

    body = api.client.post("/api/events/tickets", headers=headers).json()

    assert body["expires_at"] == token_claims(headers)["exp"]


def test_each_request_gets_a_different_ticket(api: Api) -> None:
    first = api.client.post("/api/events/tickets", headers=api.user()).json()["ticket"]
    second = api.client.post("/api/events/tickets", headers=api.user()).json()["ticket"]

    assert first != second
    assert len(ticket_items(api)) == 2


def test_a_ticket_needs_a_token(api: Api) -> None:
    response = api.client.post("/api/events/tickets")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert ticket_items(api) == []


def test_a_ticket_needs_a_valid_token(api: Api) -> None:
    headers = api.headers("alice", "user", lifetime=-120)

    response = api.client.post("/api/events/tickets", headers=headers)

    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]
    assert ticket_items(api) == []


def test_a_ticket_from_the_api_redeems_to_the_caller(api: Api) -> None:
    headers = api.headers("alice", "manager")
    claims = token_claims(headers)
    ticket = api.client.post("/api/events/tickets", headers=headers).json()["ticket"]

    redeemed = store(api).redeem(ticket)

    assert redeemed == Principal(claims["sub"], "alice", Role.MANAGER, claims["exp"])


# ---- DynamoDbTicketStore -----------------------------------------------------------------------
def test_a_ticket_redeems_exactly_once(api: Api) -> None:
    caller = principal()
    issued = store(api).issue(caller)

    assert store(api).redeem(issued.ticket) == caller
    assert store(api).redeem(issued.ticket) is None
    assert ticket_items(api) == []


def test_an_expired_ticket_redeems_to_nothing(api: Api) -> None:
    issued = store(api).issue(principal(), now=time.time() - 120)

    assert issued.expires_at < time.time()
    assert store(api).redeem(issued.ticket) is None


def test_a_ticket_is_good_until_its_expiry_second_and_not_after(api: Api) -> None:
    on_time = store(api).issue(principal())
    late = store(api).issue(principal())

    assert store(api).redeem(on_time.ticket, now=on_time.expires_at) is not None
    assert store(api).redeem(late.ticket, now=late.expires_at + 1) is None


def test_a_ticket_issued_for_a_token_about_to_expire_expires_with_it(api: Api) -> None:
    caller = principal(expires_in=10)

    issued = store(api).issue(caller)

    assert issued.expires_at == caller.expires_at


@pytest.mark.parametrize(
    "ticket",
    [
        pytest.param("never-issued-ticket", id="unknown"),
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too long"),
    ],
)
def test_a_ticket_that_was_never_issued_redeems_to_nothing(api: Api, ticket: str) -> None:
    store(api).issue(principal())  # another ticket exists

    assert store(api).redeem(ticket) is None
    assert len(ticket_items(api)) == 1


def test_a_ticket_differing_by_one_character_redeems_to_nothing(api: Api) -> None:
    issued = store(api).issue(principal())
    altered = issued.ticket[:-1] + ("A" if issued.ticket[-1] != "A" else "B")

    assert store(api).redeem(altered) is None
    assert store(api).redeem(issued.ticket) is not None


def test_the_table_keeps_only_a_hash_of_the_ticket(api: Api) -> None:
    caller = principal()
    issued = store(api).issue(caller)

    (item,) = ticket_items(api)
    everything = json.dumps(table_items(api))

    assert issued.ticket not in everything
    assert item["pk"]["S"] == TICKET_PK_PREFIX + hashlib.sha256(issued.ticket.encode()).hexdigest()
    assert item["username"]["S"] == "alice"
    assert item["role"]["S"] == "user"
    assert int(item["expires_at"]["N"]) == issued.expires_at
    assert int(item["token_expires_at"]["N"]) == caller.expires_at


def test_tickets_are_not_mistaken_for_workers(api: Api) -> None:
    api.client.post("/api/events/tickets", headers=api.admin)

    assert api.client.get("/api/workers", headers=api.admin).json() == {"workers": []}
