"""L6: the edges of who a token says the caller is, each refused with a reason.

The owner's name comes from one configured claim, which must be a non-empty string (no
falling back to `username` or `sub`); `azp`, when present or when `aud` names several
clients, must be us; no token lives longer than a day; issuers and key sets are https
unless they are on this machine. Ownership keeps the immutable `sub` beside the name, so a
new user given an old user's name does not inherit their workers, live (the events carry
the sub as `ownersub`) as well as through the API.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from cmlfleet.access import may_see
from cmlfleet.events.catalog import WorkerTerminated
from cmlfleet.events.envelope import CloudEvent, make_event
from cmlfleet.identity import (
    MAX_TOKEN_LIFETIME_SECONDS,
    AuthenticationError,
    JwksSigningKeys,
    Principal,
    Role,
    StaticSigningKeys,
    TokenVerifier,
    require_https,
)
from devstack.issuer import DevelopmentIssuer

ISSUER = "https://cognito-idp.test/pool"
APP_CLIENT = "cmlfleet-app-client"


@pytest.fixture(scope="module")
def cognito() -> DevelopmentIssuer:
    return DevelopmentIssuer(ISSUER, audience=APP_CLIENT)


def verifier_of(cognito: DevelopmentIssuer, **options: Any) -> TokenVerifier:
    keys = StaticSigningKeys(cognito.jwks())
    return TokenVerifier(issuer=ISSUER, audience=APP_CLIENT, keys=keys, **options)


def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(token)
    return refused.value.reason


# ---- the owner's name: one claim, a string ----------------------------------------------------
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"cognito:username": None}, id="only sub"),
        pytest.param({"cognito:username": ["alice"]}, id="a list"),
        pytest.param({"cognito:username": ""}, id="empty"),
        pytest.param({"cognito:username": "   "}, id="blank"),
        pytest.param({"cognito:username": 7}, id="a number"),
        pytest.param({"cognito:username": {"name": "alice"}}, id="an object"),
    ],
)
def test_l6_a_token_whose_owner_claim_is_not_a_name_is_refused(
    cognito: DevelopmentIssuer, claims: dict[str, Any]
) -> None:
    reason = refusal(verifier_of(cognito), cognito.token("alice", "user", **claims))

    assert reason == 'the token\'s "cognito:username" claim must name the user (a string)'


def test_l6_an_id_token_naming_its_user_in_username_only_is_refused(
    cognito: DevelopmentIssuer,
) -> None:
    """`username` is where Cognito's access tokens name the user, never an ID token's."""
    token = cognito.access_token("bob", "user", token_use="id", aud=APP_CLIENT)

    assert '"cognito:username"' in refusal(verifier_of(cognito), token)


def test_l6_the_owner_comes_from_the_configured_claim_and_no_other(
    cognito: DevelopmentIssuer,
) -> None:
    verifier = verifier_of(cognito, owner_claim="email")
    token = cognito.token("alice", "user", email="alice@example.com")

    assert verifier.verify(token).username == "alice@example.com"
    assert refusal(verifier, cognito.token("alice", "user")) == (
        'the token\'s "email" claim must name the user (a string)'
    )


def test_l6_a_cognito_access_token_names_its_user_in_username(
    cognito: DevelopmentIssuer,
) -> None:
    """Cognito writes the same name as `cognito:username` in ID tokens, `username` in access
    tokens; another configured claim is not in access tokens, so they are refused then."""
    access = cognito.access_token("alice", "user")

    assert verifier_of(cognito).verify(access).username == "alice"
    assert "email" in refusal(verifier_of(cognito, owner_claim="email"), access)
    without = cognito.access_token("alice", "user", username=None)
    assert '"username"' in refusal(verifier_of(cognito), without)


def test_l6_a_token_with_an_empty_subject_is_refused(cognito: DevelopmentIssuer) -> None:
    assert refusal(verifier_of(cognito), cognito.token("alice", "user", sub="")) == (
        'token is missing the "sub" claim'
    )


# ---- azp ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(
            {"aud": ["other-client", APP_CLIENT]},
            'token for several audiences is missing the "azp" claim',
            id="several aud, no azp",
        ),
        pytest.param(
            {"aud": ["other-client", APP_CLIENT], "azp": "other-client"},
            "token was issued to another client",
            id="several aud, azp another",
        ),
        pytest.param(
            {"azp": "other-client"}, "token was issued to another client", id="azp another"
        ),
        pytest.param({"azp": ""}, "token was issued to another client", id="azp empty"),
        pytest.param({"azp": [APP_CLIENT]}, "token was issued to another client", id="azp list"),
    ],
)
def test_l6_a_token_issued_to_another_client_is_refused(
    cognito: DevelopmentIssuer, claims: dict[str, Any], reason: str
) -> None:
    assert refusal(verifier_of(cognito), cognito.token("alice", "user", **claims)) == reason


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"aud": ["other-client", APP_CLIENT], "azp": APP_CLIENT}, id="several aud"),
        pytest.param({"azp": APP_CLIENT}, id="one aud"),
        pytest.param({"aud": [APP_CLIENT]}, id="a list of one, no azp"),
    ],
)
def test_l6_a_token_issued_to_us_is_accepted(
    cognito: DevelopmentIssuer, claims: dict[str, Any]
) -> None:
    assert verifier_of(cognito).verify(cognito.token("alice", "user", **claims)).role == Role.USER


# ---- lifetime ------------------------------------------------------------------------------
def test_l6_a_token_that_lives_longer_than_a_day_is_refused(cognito: DevelopmentIssuer) -> None:
    verifier = verifier_of(cognito)
    now = int(time.time())
    in_2100 = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())

    assert refusal(verifier, cognito.token("alice", "user", iat=now, exp=in_2100)) == (
        "token lives longer than 24 h"
    )
    too_long = cognito.token("alice", "user", lifetime=MAX_TOKEN_LIFETIME_SECONDS + 1)
    assert refusal(verifier, too_long) == "token lives longer than 24 h"
    a_day = cognito.token("alice", "user", lifetime=MAX_TOKEN_LIFETIME_SECONDS)
    assert verifier.verify(a_day).username == "alice"


# ---- https ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc",
        "https://idp.example.com/realms/x/protocol/openid-connect/certs",
        "http://127.0.0.1:8080/auth",
        "http://127.9.9.9/auth",
        "http://localhost:8080/auth",
        "http://LocalHost/auth",
        "http://[::1]:8080/auth",
    ],
)
def test_l6_https_urls_and_loopback_http_urls_are_allowed(url: str) -> None:
    assert require_https(url, "OIDC_ISSUER") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com",
        "http://10.0.0.5/auth",
        "http://0.0.0.0:8080/auth",
        "http://localhost.example.com/auth",
        "http://localhost@idp.example.com/auth",
        "ftp://idp.example.com",
        "https://",
        "idp.example.com",
        "",
    ],
)
def test_l6_other_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ValueError, match="OIDC_JWKS_URL must be an https:// URL"):
        require_https(url, "OIDC_JWKS_URL")


def test_l6_the_key_set_is_not_fetched_over_plain_http_from_another_host() -> None:
    with pytest.raises(ValueError, match="https"):
        JwksSigningKeys("http://idp.example.com/.well-known/jwks.json")


# ---- ownership: the name and the sub -------------------------------------------------------
def principal(username: str, subject: str, role: Role = Role.USER) -> Principal:
    return Principal(subject=subject, username=username, role=role, expires_at=0)


@pytest.mark.parametrize(
    ("caller", "owner_sub", "sees"),
    [
        pytest.param(principal("bob", "sub-old"), "sub-old", True, id="the same bob"),
        pytest.param(principal("bob", "sub-new"), "sub-old", False, id="a new bob"),
        pytest.param(principal("bob", "sub-new"), None, True, id="no sub known: by name"),
        pytest.param(principal("alice", "sub-old"), "sub-old", False, id="another name"),
        pytest.param(principal("ada", "x", Role.ADMIN), "sub-old", True, id="an admin"),
        pytest.param(principal("max", "x", Role.MANAGER), "sub-old", True, id="a manager"),
    ],
)
def test_l6_a_user_sees_a_worker_owned_by_their_name_and_their_sub(
    caller: Principal, owner_sub: str | None, sees: bool
) -> None:
    assert may_see(caller, "bob", owner_sub) is sees


def terminated(**options: Any) -> CloudEvent:
    payload = WorkerTerminated(worker_id="w-1", terminated_at=datetime.now(UTC), terminated_by="x")
    return make_event(payload, worker_id="w-1", version=2, owner="bob", **options)


def test_l6_an_event_carries_the_owners_sub_as_the_ownersub_extension() -> None:
    event = terminated(owner_sub="sub-old")
    document = json.loads(event.to_json())

    assert document["ownersub"] == "sub-old"
    assert CloudEvent.from_json(event.to_json()) == event


def test_l6_an_event_of_an_owner_without_a_known_sub_has_no_ownersub() -> None:
    event = terminated()
    document = json.loads(event.to_json())

    assert "ownersub" not in document
    assert event.ownersub is None
    assert CloudEvent.from_json(json.dumps(document | {"ownersub": ""})).ownersub is None
