"""Who is calling: OIDC bearer tokens verified against the issuer's keys, mapped to roles.

Verification checks the signature (RS256 only, so `alg: none` and HMAC-with-the-public-key
tricks fail), the issuer, expiry, not-before and whom the token is for. Cognito signs two
kinds, told apart by `token_use`: an ID token names the app client in `aud`, an access token
in `client_id` (it has no `aud`); each is held to its own claim, and any other kind is
refused. Tokens without `token_use` (other issuers) must name the audience in `aud`; an
`azp` (authorized party) must be our client too, and is required when `aud` names several.
No token may live longer than a day. Roles come from one claim (Cognito's `cognito:groups`
by default); the strongest one known wins. The caller's name comes from one claim too
(`cognito:username` by default), which must be a string: it decides who owns a worker,
beside the immutable `sub` (names can be given again, subs cannot).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from jwt import PyJWKClient

ALGORITHMS = ["RS256"]
CLOCK_SKEW_SECONDS = 30
# Cognito's ID tokens live at most a day; a longer one is not Cognito's, or a mistake.
MAX_TOKEN_LIFETIME_SECONDS = 24 * 3600
# How long a fetched key set is trusted: this bounds how long a key the issuer removed
# (after a leak, say) keeps working here, at the cost of one fetch per process every five
# minutes. An unknown kid refetches sooner (at most every 30 s, PyJWT's cooldown).
JWKS_LIFESPAN_SECONDS = 300
# While the issuer's key set cannot be fetched, the last one fetched stands this much longer
# (an outage must not sign everyone out); a fetch that succeeds replaces it at once.
JWKS_STALE_SECONDS = 3600
# Ownership is decided by this name, so it must be a claim the issuer asserts: never
# `preferred_username`, which many identity providers let the user edit.
DEFAULT_OWNER_CLAIM = "cognito:username"
# Cognito writes the same user name as `cognito:username` in ID tokens and as `username` in
# access tokens. Any other configured claim is read as is, also in access tokens (which
# then lack it and are refused: an owner is never taken from a second claim).
ACCESS_TOKEN_OWNER_CLAIMS = {"cognito:username": "username"}


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
    """A verified caller: `subject` is the issuer's immutable `sub`, `username` the name
    workers are owned by (which the issuer may give to someone else later)."""

    subject: str
    username: str
    role: Role
    expires_at: int

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.ADMIN, Role.MANAGER)


def require_https(url: str, what: str) -> str:
    """`url` if it is https, or http on this machine (the local stack); else ValueError.

    Keys fetched over plain http can be swapped on the way, and an issuer's URL is where
    its keys are found, so both are held to this (`what` names the setting in the error).
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _is_loopback(host):
        return url
    raise ValueError(f"{what} must be an https:// URL (http:// only on this machine): {url!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SigningKeys(Protocol):
    """Where the verifier finds the public key for a token (its `kid`)."""

    def key_for(self, token: str) -> Any: ...


class JwksSigningKeys:
    """Keys fetched from the issuer's JWKS URL, the set cached for `lifespan` seconds.

    An unknown `kid` refetches the set (at most every 30 s). No key is cached apart from
    the set (`cache_keys=False`): PyJWT's per-kid cache never expires, so a key the issuer
    removed would stay trusted for the life of the process (M2). If a refetch fails, the
    set fetched last serves `stale_for` seconds more.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        stale_for: float = JWKS_STALE_SECONDS,
    ) -> None:
        require_https(jwks_url, "the JWKS URL")
        self._client = PyJWKClient(jwks_url, cache_keys=False, lifespan=lifespan, timeout=5)
        self._usable_until = lifespan + stale_for  # seconds after a successful fetch

    def key_for(self, token: str) -> Any:
        try:
            return self._client.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            unavailable = "the identity provider's keys are unavailable"
        except jwt.PyJWKClientError:
            raise AuthenticationError("token signed with an unknown key") from None
        except (jwt.PyJWTError, ValueError):
            # An empty or garbled key set (say an HTML error page) must not become a 500.
            unavailable = "the identity provider's keys are unusable"
        key = self._last_fetched_key(token)
        if key is None:
            raise AuthenticationError(unavailable)
        return key

    def _last_fetched_key(self, token: str) -> Any | None:
        """The token's key in the set fetched last, if that is not too old to stand in."""
        cache = self._client.jwk_set_cache
        held = cache.jwk_set_with_timestamp if cache is not None else None
        if held is None or time.monotonic() > held.get_timestamp() + self._usable_until:
            return None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        found = self._client.match_kid(held.get_jwk_set().keys, kid) if kid else None
        return None if found is None else found.key


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
        self,
        *,
        issuer: str,
        audience: str,
        keys: SigningKeys,
        roles_claim: str = "cognito:groups",
        owner_claim: str = DEFAULT_OWNER_CLAIM,
    ) -> None:
        self._issuer, self._audience, self._keys = issuer, audience, keys
        self._roles_claim, self._owner_claim = roles_claim, owner_claim

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
        _check_lifetime(claims)
        self._check_audience(claims)
        return principal_from_claims(claims, self._roles_claim, self._owner_claim)

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
            # A token for several audiences was issued to one of them (`azp`): it must be us,
            # or another client's token that also names us would pass for ours.
            if isinstance(claims["aud"], list) and len(claims["aud"]) > 1 and "azp" not in claims:
                raise AuthenticationError('token for several audiences is missing the "azp" claim')
        else:
            # Not echoed: the claim is the issuer's text, not ours to show.
            raise AuthenticationError('token_use not accepted: only "id" and "access" tokens are')
        # An access token's `client_id` already names whom it was issued to (checked above).
        if "azp" in claims and claims["azp"] != self._audience:
            raise AuthenticationError("token was issued to another client")


def _check_lifetime(claims: Mapping[str, Any]) -> None:
    """No token lives longer than a day (one dated 2100 would outlive any revocation)."""
    # PyJWT has checked that both are present and whole numbers.
    if int(claims["exp"]) - int(claims["iat"]) > MAX_TOKEN_LIFETIME_SECONDS:
        raise AuthenticationError(f"token lives longer than {MAX_TOKEN_LIFETIME_SECONDS // 3600} h")


def principal_from_claims(
    claims: Mapping[str, Any], roles_claim: str, owner_claim: str = DEFAULT_OWNER_CLAIM
) -> Principal:
    """The caller's sub, name and strongest known role; no known role is not a caller at all.

    The name is read from `owner_claim` alone (Cognito's access tokens: its own name for
    it) and must be a non-empty string: no other claim stands in for a missing one.
    """
    role = strongest_role(_as_list(claims.get(roles_claim)))
    if role is None:
        raise AuthenticationError("token grants no CML Fleet role")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError('token is missing the "sub" claim')
    if claims.get("token_use") == "access":
        owner_claim = ACCESS_TOKEN_OWNER_CLAIMS.get(owner_claim, owner_claim)
    username = claims.get(owner_claim)
    if not isinstance(username, str) or not username.strip():
        raise AuthenticationError(
            f'the token\'s "{owner_claim}" claim must name the user (a string)'
        )
    return Principal(subject, username, role, int(claims["exp"]))


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
