"""Strict-Transport-Security on every response of the API (the load balancer adds it too)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A year, subdomains included: the dashboard's origin is HTTPS only. Browsers ignore the
# header over plain HTTP (RFC 6797, 8.1), so the local stack is unaffected.
HSTS = "max-age=31536000; includeSubDomains"


class StrictTransportSecurity:
    """ASGI middleware: adds `Strict-Transport-Security` to each HTTP response it passes.

    Starlette answers an unhandled error outside every middleware (ServerErrorMiddleware),
    so the catch-all 500 handler sets the header itself (`fleet_api.errors`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Strict-Transport-Security"] = HSTS
            await send(message)

        await self._app(scope, receive, send_with_hsts)
