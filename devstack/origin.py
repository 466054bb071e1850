"""One local origin that routes paths as the ALB does, so the browser needs no CORS.

Rules, first match wins (the ALB listener rules in the same order):
  /api/events/tickets  → API          (a command, even though it sits under /api/events)
  /api/events/*        → relay        (proxied, streamed unbuffered)
  /api/*               → API          (the FastAPI app, in this process)
  /auth/*              → development issuer (local only)
  everything else      → relay        (the dashboard's static files)
"""

from __future__ import annotations

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
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


class LocalOrigin:
    def __init__(self, *, api: ASGIApp, relay_url: str, auth: ASGIApp) -> None:
        self._api, self._auth = api, auth
        self._relay = httpx.AsyncClient(
            base_url=relay_url, timeout=httpx.Timeout(10, read=None), follow_redirects=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._relay.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
