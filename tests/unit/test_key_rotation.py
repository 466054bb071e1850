"""M2: a signing key the issuer removed from its JWKS is refused once the key set is refreshed.

The keys come from a real HTTP server (as the API and the relay fetch Cognito's), which the
test rotates from key A to key B. The set's lifespan, or the clock, is injected, so the refresh
is forced without sleeping.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cmlfleet.identity import (
    JWKS_LIFESPAN_SECONDS,
    JWKS_RETRY_AFTER_SECONDS,
    AuthenticationError,
    JwksSigningKeys,
    TokenVerifier,
)
from devstack.issuer import DevelopmentIssuer

ISSUER = "https://cognito-idp.test/pool"
AUDIENCE = "cmlfleet-app-client"
EXPIRES_AT_ONCE = 1e-9  # seconds: every lookup finds the set expired and fetches it again
HANGS_FOR = 10.0  # seconds a hanging endpoint keeps a request waiting (released at teardown)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """An issuer's JWKS endpoint that serves whatever key set it was last given."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.down = False  # answers 503, as an issuer in an outage
        self.hangs = False  # accepts the request and answers nothing (a blackholed issuer)
        self.body: bytes | None = None  # served as is instead of the key set (a 200 all the same)
        self._released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.hangs:
                    server._released.wait(HANGS_FOR)
                    return
                if server.down:
                    self.send_error(503)
                    return
                body = server.body if server.body is not None else json.dumps(server.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_port}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._released.set()
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def verifier_of(keys: JwksSigningKeys) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, keys=keys)


def test_m2_a_removed_key_is_refused_after_the_key_set_is_refreshed(
    jwks_server: JwksServer,
) -> None:
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    key_b = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, lifespan=EXPIRES_AT_ONCE))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.jwks = key_b.jwks()  # the issuer rotated: A is gone (say it leaked)
    forged = key_a.token("mallory", "admin")

    with pytest.raises(AuthenticationError) as refused:
        verifier.verify(forged)
    assert refused.value.reason == "token signed with an unknown key"
    assert jwks_server.fetches >= 2  # the set was fetched again, and A was not in it
    assert verifier.verify(key_b.token("ada", "admin")).username == "ada"


def test_m2_within_its_lifespan_the_key_set_is_fetched_once(jwks_server: JwksServer) -> None:
    issuer = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = issuer.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url))

    for name in ("ada", "max", "alice"):
        assert verifier.verify(issuer.token(name, "user")).username == name

    assert jwks_server.fetches == 1


def test_m2_while_the_key_set_cannot_be_fetched_the_last_one_fetched_still_stands(
    jwks_server: JwksServer,
) -> None:
    """An outage of the issuer signs nobody out; its next answer without A drops A."""
    clock = Clock()
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.down = True
    clock.advance(JWKS_LIFESPAN_SECONDS + 1)
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.down, jwks_server.jwks = False, DevelopmentIssuer(ISSUER).jwks()
    clock.advance(JWKS_RETRY_AFTER_SECONDS + 1)
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("ada", "admin"))
    assert jwks_server.fetches == 3


def test_m2_a_key_set_that_cannot_be_refreshed_stands_for_a_bounded_time(
    jwks_server: JwksServer,
) -> None:
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    keys = JwksSigningKeys(jwks_server.url, lifespan=EXPIRES_AT_ONCE, stale_for=0)
    assert verifier_of(keys).verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.down = True

    with pytest.raises(AuthenticationError, match="the identity provider's keys are unavailable"):
        verifier_of(keys).verify(key_a.token("ada", "admin"))


def test_m2_a_hanging_issuer_costs_one_short_wait_then_the_held_set_answers_without_fetching(
    jwks_server: JwksServer,
) -> None:
    """A blackholed issuer delays one request by the fetch timeout (2 s, not 5), not each one.

    The default timeout is used, so this waits once for real; the cooldown runs on the
    injected clock.
    """
    clock = Clock()
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.hangs = True
    clock.advance(JWKS_LIFESPAN_SECONDS + 1)  # the set expired: the next verify fetches
    started = time.monotonic()
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"
    assert time.monotonic() - started < 3.0  # the fetch gave up after 2 s, then fell back
    assert jwks_server.fetches == 2

    for _ in range(3):  # within the cooldown: the held set answers at once, nothing fetched
        clock.advance((JWKS_RETRY_AFTER_SECONDS - 1) / 3)
        started = time.monotonic()
        assert verifier.verify(key_a.token("ada", "admin")).username == "ada"
        assert time.monotonic() - started < 0.5
    assert jwks_server.fetches == 2

    jwks_server.hangs, jwks_server.jwks = False, DevelopmentIssuer(ISSUER).jwks()
    clock.advance(2)  # the cooldown is over: the next verify fetches again, and A is gone
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("ada", "admin"))
    assert jwks_server.fetches == 3


def test_m2_with_no_set_held_a_failed_fetch_is_not_retried_until_the_cooldown_ends(
    jwks_server: JwksServer,
) -> None:
    clock = Clock()
    issuer = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks, jwks_server.down = issuer.jwks(), True
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))

    for _ in range(3):
        with pytest.raises(
            AuthenticationError, match="the identity provider's keys are unavailable"
        ):
            verifier.verify(issuer.token("ada", "admin"))
        clock.advance(5)
    assert jwks_server.fetches == 1

    jwks_server.down = False
    clock.advance(JWKS_RETRY_AFTER_SECONDS)
    assert verifier.verify(issuer.token("ada", "admin")).username == "ada"
    assert jwks_server.fetches == 2


def test_m2_an_emptied_key_set_refuses_every_token_at_the_next_refresh(
    jwks_server: JwksServer,
) -> None:
    """Emptying the JWKS is an emergency revocation: no fallback to the set held before."""
    clock = Clock()
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.jwks = {"keys": []}
    clock.advance(JWKS_LIFESPAN_SECONDS + 1)

    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("ada", "admin"))
    assert jwks_server.fetches == 2
    clock.advance(JWKS_RETRY_AFTER_SECONDS + 1)  # and it stays refused, fetched or not
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("mallory", "admin"))


def test_m2_a_key_set_of_keys_this_service_cannot_use_is_authoritative_too(
    jwks_server: JwksServer,
) -> None:
    clock = Clock()
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    hmac = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}  # not for RS256
    jwks_server.jwks = {"keys": [{"kty": "unknown", "kid": "x"}, hmac, "not a key"]}
    clock.advance(JWKS_LIFESPAN_SECONDS + 1)

    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("ada", "admin"))
    forger = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    forger.kid = "hmac"  # an RS256 token naming the HMAC key: refused, not a crash
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(forger.token("mallory", "admin"))


@pytest.mark.parametrize(
    "body",
    [b"<html>502 Bad Gateway</html>", b'{"message": "Internal server error"}', b"[]", b""],
    ids=["html", "object-without-keys", "list", "empty"],
)
def test_m2_an_answer_that_is_not_a_key_set_leaves_the_held_set_standing(
    jwks_server: JwksServer, body: bytes
) -> None:
    clock = Clock()
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, clock=clock))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.body = body
    clock.advance(JWKS_LIFESPAN_SECONDS + 1)

    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"
    assert jwks_server.fetches == 2
