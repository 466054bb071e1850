"""The dashboard's static files and its sign-in configuration, served by the relay at `/`.

The files are plain ES modules (no build step). Every response carries a strict Content
Security Policy: scripts and styles only from this origin, no inline script, no framing,
so a worker name that slipped past escaping still could not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from relay.settings import RelaySettings

# A year, subdomains included: the dashboard's origin is HTTPS only.
HSTS = "max-age=31536000; includeSubDomains"


def dashboard_config(settings: RelaySettings) -> dict[str, Any]:
    """What the page needs to sign a user in: public values only (no secrets exist here)."""
    config: dict[str, Any] = {"roles_claim": settings.roles_claim}
    if settings.dashboard_sign_in == "development":
        users = [
            {"username": name, "role": role}
            for name, role in (
                item.split(":", 1) for item in settings.dashboard_dev_users.split(",") if item
            )
        ]
        config["sign_in"] = {"mode": "development", "token_url": "/auth/dev/token", "users": users}
    elif settings.dashboard_sign_in == "oidc" and settings.oidc_authorize_url:
        config["sign_in"] = {
            "mode": "oidc",
            "client_id": settings.oidc_client_id or settings.oidc_audience,
            "authorize_url": settings.oidc_authorize_url,
            "token_url": settings.oidc_token_url,
            "logout_url": settings.oidc_logout_url,
            "scopes": settings.oidc_scopes,
        }
    else:
        config["sign_in"] = {"mode": "none"}
    return config


def content_security_policy(settings: RelaySettings) -> str:
    connect = ["'self'"]
    if settings.dashboard_sign_in == "oidc" and settings.oidc_token_url:
        connect.append(_origin(settings.oidc_token_url))
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(connect)}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class DashboardFiles:
    """Static files with security headers; revalidated on each load (they are small)."""

    def __init__(self, directory: Path, settings: RelaySettings) -> None:
        self._files = StaticFiles(directory=directory, html=True)
        self._headers = {
            "Content-Security-Policy": content_security_policy(settings),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
            # Browsers ignore it over plain HTTP (RFC 6797, 8.1), so the local stack is
            # unaffected; the load balancer's HTTPS listener sends the same.
            "Strict-Transport-Security": HSTS,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self._headers.items():
                    headers[name] = value
            await send(message)

        await self._files(scope, receive, send_with_headers)
