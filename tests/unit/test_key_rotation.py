"""M2: a signing key the issuer removed from its JWKS is refused once the key set is refreshed.

The keys come from a real HTTP server (as the API and the relay fetch Cognito's), which the
test rotates from key A to key B. The set's lifespan is injected, so the refresh is forced
without sleeping.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cmlfleet.identity import AuthenticationError, JwksSigningKeys, TokenVerifier
from devstack.issuer import DevelopmentIssuer

ISSUER = "https://cognito-idp.test/pool"
AUDIENCE = "cmlfleet-app-client"
EXPIRES_AT_ONCE = 1e-9  # seconds: every lookup finds the set expired and fetches it again


class JwksServer:
    """An issuer's JWKS endpoint that serves whatever key set it was last given."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.down = False  # answers 503, as an issuer in an outage
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                if server.down:
                    self.send_error(503)
                    return
                body = json.dumps(server.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
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
    key_a = DevelopmentIssuer(ISSUER, audience=AUDIENCE)
    jwks_server.jwks = key_a.jwks()
    verifier = verifier_of(JwksSigningKeys(jwks_server.url, lifespan=EXPIRES_AT_ONCE))
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.down = True
    assert verifier.verify(key_a.token("ada", "admin")).username == "ada"

    jwks_server.down, jwks_server.jwks = False, DevelopmentIssuer(ISSUER).jwks()
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(key_a.token("ada", "admin"))


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
