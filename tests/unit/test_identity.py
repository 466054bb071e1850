"""Which kinds of token the verifier takes, each held to its own rule of whom it is for.

Cognito signs two kinds for a signed-in user, told apart by `token_use`: an ID token names
the app client in `aud`, an access token in `client_id` (it has no `aud`). Other OIDC
issuers send no `token_use` and are held to `aud`, as before. The rest of the verifier
(signature, issuer, expiry, roles) is in tests/api/test_authentication.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cmlfleet.identity import AuthenticationError, Principal, Role, StaticSigningKeys, TokenVerifier
from devstack.issuer import DevelopmentIssuer

ISSUER = "https://cognito-idp.test/pool"
APP_CLIENT = "cmlfleet-app-client"


@pytest.fixture(scope="module")
def cognito() -> DevelopmentIssuer:
    return DevelopmentIssuer(ISSUER, audience=APP_CLIENT)


@pytest.fixture(scope="module")
def verifier(cognito: DevelopmentIssuer) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=APP_CLIENT, keys=StaticSigningKeys(cognito.jwks()))


def refusal(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(token)
    return refused.value.reason


# ---- Cognito: ID and access tokens ---------------------------------------------------------
def test_a_users_id_and_access_tokens_are_the_same_principal(
    cognito: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    exp = int(time.time()) + 3600

    from_id = verifier.verify(cognito.token("alice", "user", exp=exp))
    from_access = verifier.verify(cognito.access_token("alice", "user", exp=exp))

    assert from_id == from_access
    assert from_access == Principal(from_id.subject, "alice", Role.USER, exp)


def test_an_access_token_that_also_names_the_app_client_in_aud_is_accepted(
    cognito: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    for aud in (APP_CLIENT, ["another-api", APP_CLIENT]):
        assert verifier.verify(cognito.access_token("ada", "admin", aud=aud)).role == Role.ADMIN


def test_an_id_token_for_several_audiences_issued_to_us_is_accepted(
    cognito: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    """Issued to us (`azp`): L6 refuses one without it (tests/unit/test_identity_edges.py)."""
    token = cognito.token("ada", "admin", aud=["another-client", APP_CLIENT], azp=APP_CLIENT)

    assert verifier.verify(token).username == "ada"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"client_id": "another-app-client"}, "access token is for another client"),
        pytest.param({"client_id": [APP_CLIENT]}, "access token is for another client"),
        pytest.param({"client_id": None}, 'access token is missing the "client_id" claim'),
        pytest.param({"client_id": ""}, 'access token is missing the "client_id" claim'),
        pytest.param({"aud": "another-api"}, "token is for another audience"),
        pytest.param({"aud": [APP_CLIENT, 7]}, "token is for another audience"),
        pytest.param({"token_use": "id"}, 'token is missing the "aud" claim', id="relabelled id"),
    ],
)
def test_an_access_token_not_for_this_app_client_is_refused(
    cognito: DevelopmentIssuer, verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    assert refusal(verifier, cognito.access_token("ada", "admin", **overrides)) == reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"aud": "another-app-client"}, "token is for another audience"),
        pytest.param({"aud": None}, 'token is missing the "aud" claim'),
        pytest.param(
            {"token_use": "access"}, 'access token is missing the "client_id" claim', id="as access"
        ),
        pytest.param(
            {"token_use": "access", "client_id": "another-app-client"},
            "access token is for another client",
            id="as access for another client",
        ),
    ],
)
def test_an_id_token_not_for_this_app_client_is_refused(
    cognito: DevelopmentIssuer, verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    assert refusal(verifier, cognito.token("ada", "admin", **overrides)) == reason


@pytest.mark.parametrize(
    "token_use", ["refresh", "", "ID", "Access", ["id"], {"access": True}, 1, "<b>x</b>" * 40]
)
def test_a_token_of_any_other_use_is_refused_without_echoing_it(
    cognito: DevelopmentIssuer, verifier: TokenVerifier, token_use: Any
) -> None:
    reason = refusal(verifier, cognito.token("ada", "admin", token_use=token_use))

    assert reason == 'token_use not accepted: only "id" and "access" tokens are'


def test_relabelling_another_clients_id_token_as_ours_breaks_its_signature(
    cognito: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    header, payload, signature = cognito.token("ada", "admin", aud="another-app-client").split(".")
    claims = jwt.decode(f"{header}.{payload}.{signature}", options={"verify_signature": False})
    claims |= {"token_use": "access", "client_id": APP_CLIENT}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    assert refusal(verifier, f"{header}.{forged}.{signature}") == "token signature does not verify"


def test_a_machine_to_machine_access_token_for_the_app_client_grants_no_role(
    cognito: DevelopmentIssuer, verifier: TokenVerifier
) -> None:
    """Client credentials: `sub` is the client, no user, no groups: no CML Fleet role."""
    token = cognito.access_token("svc", None, sub=APP_CLIENT, username=None, scope="fleet/read")

    assert refusal(verifier, token) == "token grants no CML Fleet role"


# ---- another OIDC issuer: no token_use, held to aud ----------------------------------------
class GenericIssuer:
    """An OIDC issuer that is not Cognito: it signs exactly the claims it is given."""

    issuer = "https://idp.test"
    kid = "generic-1"

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def verifier(self) -> TokenVerifier:
        public: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        keys = StaticSigningKeys({"keys": [public | {"kid": self.kid, "alg": "RS256"}]})
        # This issuer has no `cognito:username`: its users are owners by their `sub`.
        return TokenVerifier(
            issuer=self.issuer,
            audience=APP_CLIENT,
            keys=keys,
            roles_claim="roles",
            owner_claim="sub",
        )

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        base = {"iss": self.issuer, "sub": "u-1", "roles": ["user"], "iat": now, "exp": now + 60}
        signed: str = jwt.encode(
            base | claims, self._key, algorithm="RS256", headers={"kid": self.kid}
        )
        return signed


@pytest.fixture(scope="module")
def generic() -> GenericIssuer:
    return GenericIssuer()


@pytest.mark.parametrize(
    "claims", [{"aud": APP_CLIENT}, {"aud": ["another-api", APP_CLIENT], "azp": APP_CLIENT}]
)
def test_another_issuers_token_naming_us_in_aud_is_accepted(
    generic: GenericIssuer, claims: dict[str, Any]
) -> None:
    principal = generic.verifier().verify(generic.token(**claims))

    assert (principal.subject, principal.username, principal.role) == ("u-1", "u-1", Role.USER)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param({"aud": "another-api"}, "token is for another audience", id="another aud"),
        pytest.param({}, 'token is missing the "aud" claim', id="no aud"),
        pytest.param(
            {"client_id": APP_CLIENT},
            'token is missing the "aud" claim',
            id="client_id without token_use",
        ),
        pytest.param(
            {"client_id": APP_CLIENT, "aud": "another-api"},
            "token is for another audience",
            id="client_id and another aud",
        ),
    ],
)
def test_another_issuers_token_is_held_to_aud_alone(
    generic: GenericIssuer, claims: dict[str, Any], reason: str
) -> None:
    assert refusal(generic.verifier(), generic.token(**claims)) == reason
