"""Who is calling: bearer tokens the API accepts, the ones it refuses, and why it says so."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cmlfleet.identity import (
    AuthenticationError,
    Principal,
    Role,
    StaticSigningKeys,
    TokenVerifier,
    principal_from_claims,
)
from devstack.issuer import DevelopmentIssuer
from tests.api.conftest import ISSUER, Api

AUDIENCE = "cmlfleet-tests"
WWW_AUTHENTICATE = 'Bearer error="invalid_token"'

TokenMaker = Callable[[DevelopmentIssuer], str]


# ---- how bad tokens are made -------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def good_claims(issuer: DevelopmentIssuer, role: str = "admin") -> dict[str, Any]:
    """The claims of a token the issuer would sign for ada, to reuse in hand-made tokens."""
    claims: dict[str, Any] = jwt.decode(
        issuer.token("ada", role), options={"verify_signature": False}
    )
    return claims


def public_key_pem(issuer: DevelopmentIssuer) -> bytes:
    key = jwt.PyJWK(issuer.jwks()["keys"][0]).key
    pem: bytes = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return pem


def expired(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", lifetime=-120)  # beyond the 30 s leeway


def not_valid_yet(issuer: DevelopmentIssuer) -> str:
    now = int(time.time())
    return issuer.token("ada", "admin", nbf=now + 600, iat=now)


def for_another_audience(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", aud="other")


def from_another_issuer(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", iss="https://evil.test")


def signed_by_another_key_with_the_same_kid(issuer: DevelopmentIssuer) -> str:
    """Same issuer, audience and key id: only the signature is wrong."""
    forger = DevelopmentIssuer(issuer.issuer, audience=issuer.audience)
    forger.kid = issuer.kid
    return forger.token("ada", "admin")


def signed_by_an_unknown_key(issuer: DevelopmentIssuer) -> str:
    return DevelopmentIssuer(issuer.issuer, audience=issuer.audience).token("ada", "admin")


def with_claims_tampered_after_signing(issuer: DevelopmentIssuer) -> str:
    """A user's genuine token whose payload was rewritten to claim the admin group."""
    header, _, signature = issuer.token("eve", "user").split(".")
    claims = good_claims(issuer, "user") | {"cognito:username": "eve", "cognito:groups": ["admin"]}
    return f"{header}.{b64url_json(claims)}.{signature}"


def unsigned_alg_none(issuer: DevelopmentIssuer) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": issuer.kid}
    return f"{b64url_json(header)}.{b64url_json(good_claims(issuer))}."


def hs256_signed_with_the_public_key(issuer: DevelopmentIssuer) -> str:
    """Key confusion: HMAC keyed with the issuer's public key PEM (PyJWT refuses to make it)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid}
    signing_input = f"{b64url_json(header)}.{b64url_json(good_claims(issuer))}"
    mac = hmac.new(public_key_pem(issuer), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def without_any_role(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", None)


def with_only_an_unknown_group(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", None, **{"cognito:groups": ["guest"]})


def without_a_subject(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", sub=None)


def without_an_expiry(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", exp=None)


# Cognito's two kinds of token: an ID token names the app client in `aud`, an access token in
# `client_id` (and has no `aud`); `token_use` says which, and each is held to its own rule.
def access_token_for_another_client(issuer: DevelopmentIssuer) -> str:
    """A genuine access token of the same user pool, issued to another app client."""
    return issuer.access_token("ada", "admin", client_id="another-app-client")


def access_token_with_another_audience(issuer: DevelopmentIssuer) -> str:
    return issuer.access_token("ada", "admin", aud="other")


def id_token_claiming_to_be_an_access_token(issuer: DevelopmentIssuer) -> str:
    """Right `aud`, but an access token is held to `client_id`, which it lacks."""
    return issuer.token("ada", "admin", token_use="access")


def access_token_claiming_to_be_an_id_token(issuer: DevelopmentIssuer) -> str:
    """Right `client_id`, but an ID token is held to `aud`, which it lacks."""
    return issuer.access_token("ada", "admin", token_use="id")


def of_another_token_use(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", token_use="refresh")


# L6: who the caller is must be unambiguous, and no token lives for ever.
def with_the_owner_as_a_list(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", **{"cognito:username": ["ada"]})


def for_several_audiences_without_azp(issuer: DevelopmentIssuer) -> str:
    """Another client's token that also names us: `azp` would say whose it is."""
    return issuer.token("ada", "admin", aud=["another-app-client", issuer.audience])


def issued_to_another_client(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", azp="another-app-client")


def valid_until_2100(issuer: DevelopmentIssuer) -> str:
    return issuer.token("ada", "admin", iat=int(time.time()), exp=4102444800)


def garbage(_: DevelopmentIssuer) -> str:
    return "not-a-jwt"


REFUSED_TOKENS = [
    pytest.param(garbage, "malformed", id="garbage"),
    pytest.param(expired, "expired", id="expired"),
    pytest.param(not_valid_yet, "not valid yet", id="not yet valid"),
    pytest.param(for_another_audience, "audience", id="another audience"),
    pytest.param(from_another_issuer, "issuer", id="another issuer"),
    pytest.param(signed_by_another_key_with_the_same_kid, "signature", id="another key"),
    pytest.param(with_claims_tampered_after_signing, "signature", id="tampered claims"),
    pytest.param(signed_by_an_unknown_key, "unknown key", id="unknown kid"),
    pytest.param(unsigned_alg_none, "algorithm", id="alg none"),
    pytest.param(hs256_signed_with_the_public_key, "algorithm", id="HS256 key confusion"),
    pytest.param(without_any_role, "role", id="no role"),
    pytest.param(with_only_an_unknown_group, "role", id="unknown group"),
    pytest.param(without_a_subject, 'missing the "sub"', id="no subject"),
    pytest.param(without_an_expiry, 'missing the "exp"', id="no expiry"),
    pytest.param(access_token_for_another_client, "another client", id="another app client"),
    pytest.param(access_token_with_another_audience, "audience", id="access with another aud"),
    pytest.param(id_token_claiming_to_be_an_access_token, '"client_id"', id="id as access"),
    pytest.param(access_token_claiming_to_be_an_id_token, '"aud"', id="access as id"),
    pytest.param(of_another_token_use, "token_use", id="another token_use"),
    pytest.param(with_the_owner_as_a_list, '"cognito:username"', id="owner as a list"),
    pytest.param(for_several_audiences_without_azp, '"azp"', id="several aud, no azp"),
    pytest.param(issued_to_another_client, "another client", id="azp another client"),
    pytest.param(valid_until_2100, "longer than 24 h", id="valid until 2100"),
]


def unauthorized(response: Any) -> str:
    """The reason of a 401 response, after checking its shape."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "unauthorized"
    reason: str = body["error"]["message"]
    return reason


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- over HTTP -------------------------------------------------------------------------------
def test_a_request_without_a_token_is_told_a_bearer_token_is_required(api: Api) -> None:
    reason = unauthorized(api.client.get("/api/workers"))

    assert reason == "a bearer token is required"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic YWRhOnNlY3JldA==", id="basic"),
        pytest.param("Bearer", id="scheme only"),
        pytest.param("Bearer    ", id="blank token"),
        pytest.param("", id="empty header"),
    ],
)
def test_anything_but_a_bearer_token_is_refused(api: Api, authorization: str) -> None:
    reason = unauthorized(api.client.get("/api/workers", headers={"Authorization": authorization}))

    assert reason == "a bearer token is required"


def test_a_valid_token_under_another_scheme_is_refused(api: Api) -> None:
    token = api.issuer.token("ada", "admin")

    response = api.client.get("/api/workers", headers={"Authorization": f"Token {token}"})

    assert unauthorized(response) == "a bearer token is required"


def test_a_token_in_the_query_string_is_not_accepted(api: Api) -> None:
    token = api.issuer.token("ada", "admin")

    response = api.client.get(f"/api/workers?access_token={token}")

    assert unauthorized(response) == "a bearer token is required"


def test_the_bearer_scheme_is_case_insensitive(api: Api) -> None:
    token = api.issuer.token("ada", "admin")

    response = api.client.get("/api/workers", headers={"Authorization": f"bearer {token}"})

    assert response.status_code == 200


def test_a_token_just_inside_the_clock_skew_leeway_is_accepted(api: Api) -> None:
    token = api.issuer.token("ada", "admin", lifetime=-10)

    assert api.client.get("/api/workers", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(("make_token", "why"), REFUSED_TOKENS)
def test_a_refused_token_gets_401_saying_why(api: Api, make_token: TokenMaker, why: str) -> None:
    reason = unauthorized(api.client.get("/api/workers", headers=bearer(make_token(api.issuer))))

    assert why in reason.lower()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/workers"),
        ("GET", "/api/workers/w-0123456789abcdef0123"),
        ("POST", "/api/workers"),
        ("POST", "/api/workers/import"),
        ("POST", "/api/workers/w-0123456789abcdef0123/start"),
        ("POST", "/api/workers/w-0123456789abcdef0123/stop"),
        ("DELETE", "/api/workers/w-0123456789abcdef0123"),
        ("POST", "/api/events/tickets"),
    ],
)
def test_every_route_but_health_needs_a_token(api: Api, method: str, path: str) -> None:
    assert unauthorized(api.client.request(method, path)) == "a bearer token is required"


def test_a_forged_admin_token_changes_nothing(api: Api) -> None:
    token = signed_by_another_key_with_the_same_kid(api.issuer)

    response = api.client.post("/api/workers", json={"name": "evil"}, headers=bearer(token))

    assert "signature" in unauthorized(response)
    assert api.client.get("/api/workers", headers=api.admin).json() == {"workers": []}


def test_a_token_with_the_user_and_admin_groups_acts_as_admin(api: Api) -> None:
    headers = api.headers("ada", None, **{"cognito:groups": ["user", "admin"]})

    response = api.client.post("/api/workers", json={"name": "lab"}, headers=headers)

    assert response.status_code == 201, response.text
    assert response.json()["owner"] == "ada"


def test_roles_given_as_a_space_separated_string_work(api: Api) -> None:
    worker = api.create_worker("lab", "alice")
    headers = api.headers("max", None, **{"cognito:groups": "user manager"})

    seen = api.client.get(f"/api/workers/{worker['worker_id']}", headers=headers)
    created = api.client.post("/api/workers", json={"name": "x"}, headers=headers)

    assert seen.status_code == 200  # a manager sees alice's worker ...
    assert seen.json()["instance_id"] == worker["instance_id"]  # ... unmasked
    assert created.status_code == 403  # but is no admin
    assert created.json()["error"]["message"] == "role manager may not create"


def test_a_user_is_known_by_their_cognito_username(api: Api) -> None:
    worker = api.create_worker("lab", "alice")
    headers = api.headers("alice", "user", sub="11111111-2222-3333-4444-555555555555")

    response = api.client.get("/api/workers", headers=headers)

    assert [w["worker_id"] for w in response.json()["workers"]] == [worker["worker_id"]]


def test_a_cognito_access_token_is_accepted_as_the_id_token_is(api: Api) -> None:
    token = api.issuer.access_token("ada", "admin")

    response = api.client.post("/api/workers", json={"name": "lab"}, headers=bearer(token))

    assert response.status_code == 201, response.text
    assert response.json()["owner"] == "ada"


def test_a_user_is_known_by_the_same_name_from_their_access_token(api: Api) -> None:
    worker = api.create_worker("lab", "alice")
    api.create_worker("other", "bob")
    token = api.issuer.access_token("alice", "user")

    response = api.client.get("/api/workers", headers=bearer(token))

    assert [w["worker_id"] for w in response.json()["workers"]] == [worker["worker_id"]]


def test_an_access_token_gets_a_stream_ticket(api: Api) -> None:
    token = api.issuer.access_token("alice", "user")

    response = api.client.post("/api/events/tickets", headers=bearer(token))

    assert response.status_code == 201, response.text


# ---- TokenVerifier, without HTTP ---------------------------------------------------------------
@pytest.fixture(scope="module")
def issuer() -> DevelopmentIssuer:
    return DevelopmentIssuer(ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="module")
def verifier(issuer: DevelopmentIssuer) -> TokenVerifier:
    return TokenVerifier(
        issuer=issuer.issuer, audience=issuer.audience, keys=StaticSigningKeys(issuer.jwks())
    )


def test_the_verifier_turns_a_good_token_into_a_principal(
    issuer: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.token("ada", "admin")
    claims = jwt.decode(token, options={"verify_signature": False})

    principal = verifier.verify(token)

    assert principal == Principal(
        subject=claims["sub"], username="ada", role=Role.ADMIN, expires_at=claims["exp"]
    )
    assert principal.sees_everything


@pytest.mark.parametrize(("role", "sees_everything"), [("manager", True), ("user", False)])
def test_the_verifier_maps_each_group_to_its_role(
    issuer: DevelopmentIssuer, verifier: TokenVerifier, role: str, sees_everything: bool
) -> None:
    principal = verifier.verify(issuer.token("max", role))

    assert principal.role == Role(role)
    assert principal.sees_everything is sees_everything


@pytest.mark.parametrize(("make_token", "why"), REFUSED_TOKENS)
def test_the_verifier_refuses_a_bad_token_saying_why(
    issuer: DevelopmentIssuer, verifier: TokenVerifier, make_token: TokenMaker, why: str
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(make_token(issuer))

    assert why in refused.value.reason.lower()
    assert str(refused.value) == refused.value.reason


def test_the_verifier_accepts_a_token_expired_within_the_leeway(
    issuer: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    assert verifier.verify(issuer.token("ada", "admin", lifetime=-10)).username == "ada"


def test_the_verifier_refuses_a_token_issued_in_the_future(
    issuer: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    now = int(time.time())

    with pytest.raises(AuthenticationError, match="not valid yet"):
        verifier.verify(issuer.token("ada", "admin", iat=now + 600, exp=now + 3600))


def test_the_verifier_reads_roles_from_the_configured_claim(issuer: DevelopmentIssuer) -> None:
    verifier = TokenVerifier(
        issuer=issuer.issuer,
        audience=issuer.audience,
        keys=StaticSigningKeys(issuer.jwks()),
        roles_claim="roles",
    )

    principal = verifier.verify(issuer.token("ada", "user", roles=["manager"]))

    assert principal.role == Role.MANAGER


@pytest.mark.parametrize(
    ("groups", "role"),
    [
        (["user", "admin"], Role.ADMIN),
        (["manager", "user"], Role.MANAGER),
        ("user manager", Role.MANAGER),
        ("user,admin", Role.ADMIN),
        (" user ", Role.USER),
        (["guest", "user"], Role.USER),
        (("manager",), Role.MANAGER),
    ],
)
def test_the_strongest_known_role_wins(groups: Any, role: Role) -> None:
    claims = {"sub": "s", "exp": 1, "cognito:username": "ada", "cognito:groups": groups}

    assert principal_from_claims(claims, "cognito:groups").role == role


@pytest.mark.parametrize("groups", [None, [], "", "guest", ["Admin"], {"admin": True}, 3])
def test_claims_without_a_known_role_make_no_principal(groups: Any) -> None:
    claims = {"sub": "s", "exp": 1, "cognito:username": "ada", "cognito:groups": groups}

    with pytest.raises(AuthenticationError, match="no CML Fleet role"):
        principal_from_claims(claims, "cognito:groups")


@pytest.mark.parametrize(
    ("owner_claim", "username"),
    [("cognito:username", "ada"), ("username", "al"), ("sub", "subject-1")],
)
def test_the_username_comes_from_the_owner_claim_alone(owner_claim: str, username: str) -> None:
    claims = {"cognito:username": "ada", "username": "al", "preferred_username": "lovelace"}

    principal = principal_from_claims(
        {"sub": "subject-1", "exp": 7, "cognito:groups": ["user"], **claims},
        "cognito:groups",
        owner_claim,
    )

    assert principal.username == username
    assert (principal.subject, principal.expires_at) == ("subject-1", 7)


@pytest.mark.parametrize(
    "claims",
    [
        {"preferred_username": "alice"},  # user-editable: never an owner
        {"username": "al"},
        {},
        {"cognito:username": ""},
    ],
)
def test_without_the_owner_claim_there_is_no_principal(claims: dict[str, Any]) -> None:
    """L6: no other claim (`username`, `sub`) stands in for a missing owner claim."""
    with pytest.raises(AuthenticationError, match='"cognito:username" claim must name the user'):
        principal_from_claims(
            {"sub": "subject-1", "exp": 7, "cognito:groups": ["user"], **claims}, "cognito:groups"
        )


def test_static_keys_refuse_a_token_without_a_key_id(issuer: DevelopmentIssuer) -> None:
    header = {"alg": "RS256", "typ": "JWT"}
    token = f"{b64url_json(header)}.{b64url_json(good_claims(issuer))}.c2ln"

    with pytest.raises(AuthenticationError, match="unknown key"):
        StaticSigningKeys(issuer.jwks()).key_for(token)
