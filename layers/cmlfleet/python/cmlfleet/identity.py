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
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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
# minutes. An unknown kid refetches sooner (at most every 30 s).
JWKS_LIFESPAN_SECONDS = 300
JWKS_UNKNOWN_KID_REFETCH_SECONDS = 30
# While the issuer's key set cannot be fetched, the last one fetched stands this much longer
# (an outage must not sign everyone out); a fetch that succeeds replaces it at once.
JWKS_STALE_SECONDS = 3600
# After a failed fetch nothing is fetched for this long: the held set answers meanwhile (or
# nothing does), so a blackholed issuer delays one request per period, not every request.
JWKS_RETRY_AFTER_SECONDS = 30
# A fetch waits this long for the issuer (per connect and per read), holding up the request.
JWKS_FETCH_TIMEOUT_SECONDS = 2
KEYS_UNAVAILABLE = "the identity provider's keys are unavailable"
KEYS_UNUSABLE = "the identity provider's keys are unusable"
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
    """Keys fetched from the issuer's JWKS URL, the set trusted for `lifespan` seconds.

    An unknown `kid` refetches the set (at most every 30 s). No key outlives the set it came
    in: a key the issuer removed is refused at the next refresh (M2). The set fetched last
    stands in, `stale_for` seconds past its lifespan, while the issuer cannot be reached or
    answers with something that is not a key set (an HTML error page, say); after such a
    failure nothing is fetched for `retry_after` seconds. A key set that is well formed but
    holds no key this service can use (`{"keys": []}`: an emergency revocation) is the
    issuer's answer like any other: every token is refused, with no fallback.

    One request fetches at a time; meanwhile the others are answered by the held set if it
    has their key and may still stand in, and otherwise wait for the fetch. `clock` is a
    monotonic clock (injected by tests).
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        stale_for: float = JWKS_STALE_SECONDS,
        retry_after: float = JWKS_RETRY_AFTER_SECONDS,
        timeout: float = JWKS_FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        require_https(jwks_url, "the JWKS URL")
        # PyJWT only fetches (http(s) only, no redirects); the set is kept and aged here.
        self._client = PyJWKClient(jwks_url, cache_jwk_set=False, cache_keys=False, timeout=timeout)
        self._lifespan, self._stale_for, self._retry_after = lifespan, stale_for, retry_after
        self._clock = clock
        self._keys: dict[str, Any] | None = None  # by kid, from the last successful fetch
        self._fetched_at = 0.0  # when that was
        self._attempted_at = -math.inf  # when the last fetch ended, either way
        self._failure: str | None = None  # why the last fetch failed; None if it did not
        self._state = threading.Lock()  # guards the fields above
        self._fetching = threading.Lock()  # held by the one request fetching

    def key_for(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationError("malformed token") from None
        kid = kid if isinstance(kid, str) else None
        key = self._key_set(kid).get(kid) if kid is not None else None
        if key is None:
            raise AuthenticationError("token signed with an unknown key")
        return key

    def _key_set(self, kid: str | None) -> dict[str, Any]:
        """The keys to look `kid` up in, fetched first if due; AuthenticationError if none."""
        while True:
            with self._state:
                now = self._clock()
                if not self._fetch_due(kid, now):
                    return self._held_or_refuse(now)
                if self._fetching.acquire(blocking=False):
                    break
                if self._keys is not None and kid in self._keys and self._may_stand_in(now):
                    return self._keys  # another request is fetching; this one need not wait
            with self._fetching:  # wait for that fetch, then decide again
                pass
        try:
            outcome = self._fetch()
            with self._state:
                now = self._attempted_at = self._clock()
                if isinstance(outcome, str):
                    self._failure = outcome
                else:
                    self._keys, self._fetched_at, self._failure = outcome, now, None
                return self._held_or_refuse(now)
        finally:
            self._fetching.release()

    def _fetch_due(self, kid: str | None, now: float) -> bool:
        if self._failure is not None and now < self._attempted_at + self._retry_after:
            return False  # it failed a moment ago: do not hold up this request too
        if self._keys is None or now >= self._fetched_at + self._lifespan:
            return True
        return (
            kid is not None
            and kid not in self._keys
            and now >= self._attempted_at + JWKS_UNKNOWN_KID_REFETCH_SECONDS
        )

    def _may_stand_in(self, now: float) -> bool:
        return now <= self._fetched_at + self._lifespan + self._stale_for

    def _held_or_refuse(self, now: float) -> dict[str, Any]:
        if self._keys is not None and self._may_stand_in(now):
            return self._keys
        raise AuthenticationError(self._failure or KEYS_UNAVAILABLE)

    def _fetch(self) -> dict[str, Any] | str:
        """The issuer's signing keys by kid, or why there are none to be had (a reason)."""
        try:
            document = self._client.fetch_data()
        except (jwt.PyJWKClientConnectionError, OSError):
            return KEYS_UNAVAILABLE
        except (jwt.PyJWKClientError, ValueError):
            return KEYS_UNUSABLE  # not JSON, or not a JSON object
        keys = document.get("keys")
        if not isinstance(keys, list):
            return KEYS_UNUSABLE  # a JSON object, but no key set
        return signing_keys(keys)


def signing_keys(entries: list[Any]) -> dict[str, Any]:
    """The RSA signing keys among a JWKS's `keys`, by kid (the first of a kid); the others
    are skipped, even all of them. Only RSA: tokens are verified with RS256 alone."""
    found: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or kid in found:
            continue
        try:
            found[kid] = jwt.PyJWK(entry).key
        except jwt.PyJWTError:
            continue  # a kind of key this service cannot use
    return found


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
