"""The local development issuer: real RS256 tokens from a key made at start.

The API and the relay verify these exactly as they verify Cognito's (JWKS, issuer,
audience, expiry), so the local stack and the tests run the production checks.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEV_AUDIENCE = "cmlfleet-local"
ROLES = ("admin", "manager", "user")


class DevelopmentIssuer:
    def __init__(self, issuer: str, audience: str = DEV_AUDIENCE) -> None:
        self.issuer, self.audience = issuer.rstrip("/"), audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/.well-known/jwks.json"

    def jwks(self) -> dict[str, Any]:
        public: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [public | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(
        self,
        username: str,
        role: str | None,
        *,
        lifetime: float = 12 * 3600,
        **overrides: Any,
    ) -> str:
        """A signed ID token; `overrides` replace any claim (tests make bad tokens this way)."""
        claims = {"aud": self.audience, "cognito:username": username, "token_use": "id"}
        return self._signed(username, role, lifetime, claims | overrides)

    def access_token(
        self,
        username: str,
        role: str | None,
        /,  # so that `username` can be overridden as a claim too
        *,
        lifetime: float = 12 * 3600,
        **overrides: Any,
    ) -> str:
        """A signed access token shaped as Cognito's: `client_id` and `username`, no `aud`."""
        claims = {
            "client_id": self.audience,
            "username": username,
            "token_use": "access",
            "scope": "openid email",
            "jti": str(uuid.uuid4()),
        }
        return self._signed(username, role, lifetime, claims | overrides)

    def _signed(
        self, username: str, role: str | None, lifetime: float, claims: dict[str, Any]
    ) -> str:
        """The claims every token has (issuer, subject, groups, times) and `claims`, signed."""
        now = int(time.time())
        common: dict[str, Any] = {
            "iss": self.issuer,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}/{username}")),
            "cognito:groups": [role] if role else [],
            "iat": now,
            "exp": now + int(lifetime),
        }
        return jwt.encode(common | claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def app(self) -> Starlette:
        """The issuer's HTTP side: discovery, keys, and a development-only token endpoint."""

        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse({"issuer": self.issuer, "jwks_uri": self.jwks_url})

        async def keys(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        async def dev_token(request: Request) -> JSONResponse:
            try:
                body = await request.json()
                username, role = str(body["username"]).strip(), str(body["role"])
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": "send {username, role}"}, status_code=400)
            if role not in ROLES or not 0 < len(username) <= 64 or not username.isprintable():
                return JSONResponse({"error": f"role must be one of {ROLES}"}, status_code=400)
            return JSONResponse({"id_token": self.token(username, role), "token_type": "Bearer"})

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/.well-known/jwks.json", keys),
                Route("/dev/token", dev_token, methods=["POST"]),
            ]
        )
