"""`GET /api/events/stream`: who may connect, at what cost, and the frames they get.

A connect is rationed per client address before anything is built for it, its credential
checked on the executor of its kind, its stream counted against its principal and address
(relay/limits.py), then it is registered, sent what it missed, and live events follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from cmlfleet.events.catalog import AuthExpired, Connected, Heartbeat, ReplayOutcome, Resync
from cmlfleet.events.envelope import CloudEvent
from cmlfleet.identity import AuthenticationError, Principal
from cmlfleet.timeutil import utc_now
from relay.auth import StreamAuthenticator
from relay.frames import delivery, relay_event_frame
from relay.hub import Interest, Subscription, SubscriptionClosedError
from relay.limits import BusyError, client_address, principal_key
from relay.response import EventStreamResponse

if TYPE_CHECKING:
    from relay.app import Relay

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REPLAY_SLICE = 100  # frames framed and sent between turns of the event loop
REFUSALS_HELD_PER_ADDRESS = 32


class StreamEndpoint:
    """`GET /api/events/stream`: authenticate, admit, register, replay, then live events.

    `Last-Event-ID` (sent by EventSource when it reconnects), or `last_event_id` for a
    first connect, replays what the client missed before live events follow.
    """

    def __init__(self, relay: Relay, authenticator: StreamAuthenticator) -> None:
        self._relay, self._authenticator = relay, authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        address = client_address(
            scope.get("client"),
            _header(scope, b"x-forwarded-for"),
            relay.settings.relay_forwarded_hops,
        )
        if not relay.connects.take(address):
            relay.hub.stats["rejected_connect_rate"] += 1
            await self._refuse_connect(address, send)
            return
        admitted: list[Callable[[], None]] = []
        try:
            response = await self._respond(Request(scope, receive), address, admitted)
            await response(scope, receive, send)
        finally:
            # Here and not in the frames' generator: a response cancelled before its
            # first frame never runs the generator, and its stream must still be let go.
            for release in reversed(admitted):
                release()

    async def _refuse_connect(self, address: str, send: Send) -> None:
        """429, built before anything else is for the request, and held back a while.

        A client reconnecting in a loop ignores Retry-After; every refusal still costs the
        relay a request parsed and answered (~1 ms of the loop). Holding the answer back
        (`RELAY_REFUSAL_DELAY_SECONDS`) holds that client's connection too, so a loop over
        a few connections makes a few requests a second instead of hundreds. At most
        `REFUSALS_HELD_PER_ADDRESS` wait at once per address, so holding costs little too.
        """
        relay, held = self._relay, self._relay.refusals_held
        delay = relay.settings.relay_refusal_delay_seconds
        if delay > 0 and held[address] < REFUSALS_HELD_PER_ADDRESS:
            held[address] += 1
            relay.hub.stats["refusals_held"] += 1
            try:
                await asyncio.sleep(delay)
            finally:
                held[address] -= 1
                if held[address] <= 0:
                    del held[address]
        await send(TOO_MANY_CONNECTS_START)
        await send(TOO_MANY_CONNECTS_BODY)

    async def _respond(
        self, request: Request, address: str, admitted: list[Callable[[], None]]
    ) -> Response:
        relay, settings = self._relay, self._relay.settings
        if not relay.hub.accepting:
            return _refusal(503, "shutting_down", "relay is shutting down", retry_after=1)
        try:
            principal = await self._principal(request)
        except AuthenticationError as error:
            relay.hub.stats["rejected_unauthenticated"] += 1
            return JSONResponse(
                {"error": {"code": "unauthorized", "message": error.reason}},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        except BusyError:
            relay.hub.stats["rejected_busy"] += 1
            return _refusal(503, "busy", "the relay is busy; try again shortly", retry_after=2)
        refusal = self._admit(principal_key(principal), address, admitted)
        if refusal is not None:
            return refusal
        cursor = (
            request.headers.get("last-event-id") or request.query_params.get("last_event_id") or ""
        ).strip()[:128]
        interest = Interest(
            worker_ids=_listed(request.query_params.get("worker_ids")),
            event_types=_listed(request.query_params.get("event_types")),
        )
        # Registered for live events before history is read: nothing falls in the gap.
        subscription = relay.hub.subscribe(principal, interest)
        admitted.append(lambda: relay.hub.unsubscribe(subscription))
        return EventStreamResponse(
            _frames(relay, subscription, cursor or None),
            headers=STREAM_HEADERS,
            send_timeout=settings.relay_send_timeout_seconds,
            on_send_timeout=lambda: relay.hub.stats.update(["cutoffs_send_timeout"]),
        )

    async def _principal(self, request: Request) -> Principal:
        """Who this is: a malformed credential is refused here, on the loop; checking a
        good-looking one blocks (DynamoDB, key fetches), on the executor of its kind."""
        authenticator = self._authenticator
        credential = authenticator.credential(
            request.query_params.get("ticket"), request.headers.get("authorization")
        )
        if credential.kind == "anonymous":
            return authenticator.principal(credential)
        executor = self._relay.executors[credential.kind]
        return await executor.run(lambda: authenticator.principal(credential))

    def _admit(
        self, principal_key: str, address: str, admitted: list[Callable[[], None]]
    ) -> Response | None:
        """Count the stream against its principal and address, or refuse it (429)."""
        relay = self._relay
        if not relay.principal_streams.admit(principal_key):
            relay.hub.stats["rejected_streams_per_principal"] += 1
            return _refusal(429, "too_many_streams", "too many open streams for this user")
        admitted.append(lambda: relay.principal_streams.release(principal_key))
        if not relay.address_streams.admit(address):
            relay.hub.stats["rejected_streams_per_address"] += 1
            return _refusal(429, "too_many_streams", "too many open streams from this address")
        admitted.append(lambda: relay.address_streams.release(address))
        return None


_TOO_MANY_CONNECTS = b'{"error":{"code":"too_many_connects","message":"reconnecting too often"}}'
TOO_MANY_CONNECTS_START = {
    "type": "http.response.start",
    "status": 429,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_TOO_MANY_CONNECTS)).encode()),
        (b"retry-after", b"5"),
    ],
}
TOO_MANY_CONNECTS_BODY = {"type": "http.response.body", "body": _TOO_MANY_CONNECTS}


def _header(scope: Scope, name: bytes) -> str:
    """A request header from the raw ASGI scope, its lines joined as one list (RFC 9110
    5.3): a client that sends two `X-Forwarded-For` lines cannot hide the balancer's entry."""
    lines = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]
    return ", ".join(lines)


def _refusal(status: int, code: str, message: str, *, retry_after: int = 30) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"Retry-After": str(retry_after)},
    )


def _listed(value: str | None) -> frozenset[str]:
    """A comma-separated query parameter as a set (bounded: it is the client's input)."""
    if not value:
        return frozenset()
    return frozenset(item.strip()[:128] for item in value.split(",")[:500] if item.strip())


async def _frames(
    relay: Relay, subscription: Subscription, cursor: str | None
) -> AsyncIterator[bytes]:
    settings = relay.settings
    try:
        replay = await relay.replayer.replay(cursor, subscription)
        subscription.skip({event.id for event in replay.events})
        yield relay_event_frame(
            Connected(
                client_id=subscription.client_id,
                server_time=utc_now(),
                heartbeat_seconds=settings.heartbeat_seconds,
                # What this client is sent, and nothing about what it is not.
                replay=ReplayOutcome(
                    requested=cursor, status=replay.status, replayed=len(replay.events)
                ),
            ),
            retry_ms=settings.relay_retry_ms,
        )
        if replay.status == "resync":
            yield relay_event_frame(Resync(reason=replay.reason))
        async for frames in _replayed(subscription, replay.events):
            yield frames
        async for frames in _live(relay, subscription):
            yield frames
    finally:
        relay.hub.unsubscribe(subscription)


async def _replayed(subscription: Subscription, events: list[CloudEvent]) -> AsyncIterator[bytes]:
    """The replayed events, framed (masked) for this client exactly as live ones, a slice
    at a time with a turn of the event loop between, so other clients' writes go on."""
    for start in range(0, len(events), REPLAY_SLICE):
        framed = (subscription.frame_for(delivery(e)) for e in events[start : start + REPLAY_SLICE])
        chunk = b"".join(frame for frame in framed if frame is not None)
        if chunk:
            yield chunk
        await asyncio.sleep(0)


async def _live(relay: Relay, subscription: Subscription) -> AsyncIterator[bytes]:
    settings = relay.settings
    expires_at = subscription.principal.expires_at if subscription.principal else None
    while True:
        wait = settings.heartbeat_seconds
        if expires_at is not None:
            remaining = expires_at - time.time()
            if remaining <= 0:
                # The client gets a new ticket or token and resumes with its last id.
                relay.hub.stats["closed_auth_expired"] += 1
                yield relay_event_frame(AuthExpired())
                return
            wait = min(wait, remaining)
        try:
            frames = await subscription.next_frames(wait)
        except SubscriptionClosedError as closed:
            if closed.final_frame:
                yield closed.final_frame
            return
        if frames:
            yield b"".join(frames)
        elif expires_at is None or expires_at - time.time() > 0:
            yield relay_event_frame(Heartbeat(server_time=utc_now()))
