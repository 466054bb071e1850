"""Who is calling: OIDC bearer tokens verified against the issuer's keys, mapped to roles.

Verification checks the signature (RS256 only, so `alg: none` and HMAC-with-the-public-key
tricks fail), the issuer, expiry, not-before and whom the token is for. Cognito signs two
kinds, told apart by `token_use`: an ID token names the app client in `aud`, an access token
in `client_id` (it has no `aud`); each is held to its own claim, and any other kind is
refused. Tokens without `token_use` (other issuers) must name the audience in `aud`. Roles
come from one claim (Cognito's `cognito:groups` by default); the strongest one known wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import jwt
from jwt import PyJWKClient

ALGORITHMS = ["RS256"]
CLOCK_SKEW_SECONDS = 30
# Ownership is decided by this name, so only claims the issuer asserts count: never
# `preferred_username`, which many identity providers let the user edit.
USERNAME_CLAIMS = ("cognito:username", "username", "sub")


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    USER = "user"


ROLE_STRENGTH = {Role.ADMIN: 3, Role.MANAGER: 2, Role.USER: 1}


class AuthenticationError(Exception):
    """The token is missing or cannot be trusted; `reason` says why (safe to show)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """A verified caller."""

    subject: str
    username: str
    role: Role
    expires_at: int

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.MANAGER)


class SigningKeys(Protocol):
    """Where the verifier finds the public key for a token (its `kid`)."""

    def key_for(self, token: str) -> Any: ...


class JwksSigningKeys:
    """Keys fetched from the issuer's JWKS URL and cached (refetched for an unknown `kid`)."""

    def __init__(self, jwks_url: str) -> None:
        self._client = PyJWKClient(jwks_url, cache_keys=True, lifespan=3600, timeout=5)

    def key_for(self, token: str) -> Any:
        try:
            return self._client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            raise AuthenticationError("the identity provider's keys are unavailable") from None
        except jwt.PyJWKClientError:
            raise AuthenticationError("token signed with an unknown key") from None
        except (jwt.PyJWTError, ValueError):
            # An empty or garbled key set (say an HTML error page) must not become a 500.
            raise AuthenticationError("the identity provider's keys are unusable") from None


class StaticSigningKeys:
    """Keys given as a JWKS document (tests, or an issuer without a reachable URL)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = {key["kid"]: jwt.PyJWK(dict(key)).key for key in jwks["keys"]}

    def key_for(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise AuthenticationError("token signed with an unknown key")
        return self._keys[kid]


class TokenVerifier:
    """Turns a bearer token into a `Principal`, or raises `AuthenticationError`."""

    def __init__(
        self, *, issuer: str, audience: str, keys: SigningKeys, roles_claim: str = "cognito:groups"
    ) -> None:
        self._issuer, self._audience, self._keys = issuer, audience, keys
        self._roles_claim = roles_claim

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthenticationError("token algorithm not accepted")
        key = self._keys.key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                # Whom the token is for depends on its kind: checked below, once it is verified.
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not valid yet") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token from another issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(f"invalid token: {error}") from None
        self._check_audience(claims)
        return principal_from_claims(claims, self._roles_claim)

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """The token is for our client: in `client_id` for an access token, else in `aud`."""
        kind = claims.get("token_use")
        if kind == "access":
            client_id = claims.get("client_id")
            if not client_id:
                raise AuthenticationError('access token is missing the "client_id" claim')
            if client_id != self._audience:
                raise AuthenticationError("access token is for another client")
            # Cognito's have no `aud`; one that names someone else was not meant for us.
            if claims.get("aud") and not _names(claims["aud"], self._audience):
                raise AuthenticationError("token is for another audience")
        elif kind in (None, "id"):
            if not claims.get("aud"):
                raise AuthenticationError('token is missing the "aud" claim')
            if not _names(claims["aud"], self._audience):
                raise AuthenticationError("token is for another audience")
        else:
            # Not echoed: the claim is the issuer's text, not ours to show.
            raise AuthenticationError('token_use not accepted: only "id" and "access" tokens are')


def principal_from_claims(claims: Mapping[str, Any], roles_claim: str) -> Principal:
    """The caller's name and strongest known role; no known role is not a caller at all."""
    role = strongest_role(_as_list(claims.get(roles_claim)))
    if role is None:
        raise AuthenticationError("token grants no CML Fleet role")
    username = next((str(claims[c]) for c in USERNAME_CLAIMS if claims.get(c)), "")
    return Principal(str(claims["sub"]), username, role, int(claims["exp"]))


def strongest_role(names: Iterable[str]) -> Role | None:
    known = [Role(name) for name in names if name in {role.value for role in Role}]
    return max(known, key=ROLE_STRENGTH.__getitem__, default=None)


def _names(aud: object, audience: str) -> bool:
    """Whether an `aud` claim (one string or a list of them) names `audience`, as PyJWT reads it."""
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and all(isinstance(a, str) for a in aud) and audience in aud


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return []
