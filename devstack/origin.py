"""One local origin that routes paths as the ALB does, so the browser needs no CORS.

Rules, first match wins (the ALB listener rules in the same order):
  /api/events/tickets  → API          (a command, even though it sits under /api/events)
  /api/events/*        → relay        (proxied, streamed unbuffered)
  /api/*               → API          (the FastAPI app, in this process)
  /auth/*              → development issuer (local only)
  everything else      → relay        (the dashboard's static files)

Before any rule, the `Host` header must be one of the names the stack was started with
(`accepted_hosts`): a page the developer visits could otherwise rebind its own DNS name to
127.0.0.1 and, being same-origin with itself, read `/auth/dev/token` and drive the API.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the stack reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to an address others can reach


def accepted_hosts(host: str, port: int) -> frozenset[str]:
    """The `Host` values a stack listening on `host`:`port` answers: the loopback names,
    the bound host itself and, bound to every interface, this machine's name."""
    names = {*LOOPBACK_NAMES, f"[{host}]" if ":" in host and "[" not in host else host}
    if host in WILDCARD_HOSTS:
        names.add(socket.gethostname())
    hosts = {f"{name.lower()}:{port}" for name in names}
    if port == 80:  # a browser leaves out the default port
        hosts.update(name.lower() for name in names)
    return frozenset(hosts)


class LocalOrigin:
    def __init__(
        self, *, api: ASGIApp, relay_url: str, auth: ASGIApp, hosts: Collection[str]
    ) -> None:
        self._api, self._auth = api, auth
        self._hosts = frozenset(host.lower() for host in hosts)
        self._relay = httpx.AsyncClient(
            base_url=relay_url, timeout=httpx.Timeout(10, read=None), follow_redirects=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if _host_of(scope) not in self._hosts:
            await self._misdirected(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == "/api/events/tickets":
            await self._api(scope, receive, send)
        elif path.startswith("/api/events/"):
            await self._proxy(scope, receive, send)
        elif path.startswith("/api/"):
            await self._api(scope, receive, send)
        elif path == "/auth" or path.startswith("/auth/"):
            child = dict(
                scope, root_path=scope.get("root_path", "") + "/auth", path=path[5:] or "/"
            )
            await self._auth(child, receive, send)
        else:
            await self._proxy(scope, receive, send)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("x-forwarded-for", request.client.host if request.client else ""))
        upstream_request = self._relay.build_request(
            request.method,
            request.url.path,
            params=str(request.query_params),
            headers=headers,
            content=await request.body(),
        )
        try:
            upstream = await self._relay.send(upstream_request, stream=True)
        except httpx.TransportError:
            response = StreamingResponse(
                iter([b'{"error":{"code":"bad_gateway","message":"the relay is not reachable"}}']),
                status_code=502,
                media_type="application/json",
            )
            await response(scope, receive, send)
            return
        response = StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            background=BackgroundTask(upstream.aclose),
        )
        await response(scope, receive, send)

    async def _misdirected(self, scope: Scope, receive: Receive, send: Send) -> None:
        """421: this server does not answer for that name (RFC 9110 15.5.20)."""
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        accepted = ", ".join(sorted(self._hosts))
        message = f"this local stack answers only for Host: {accepted}"
        response = JSONResponse(
            {"error": {"code": "misdirected_request", "message": message}}, status_code=421
        )
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._relay.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _host_of(scope: Scope) -> str:
    """The request's `Host` header, lower-cased; empty when there is none."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host: str = value.decode("latin-1").lower()
            return host
    return ""
