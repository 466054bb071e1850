"""An async client for the few CML REST API v0 calls CML Fleet needs, made to poll many workers.

One `CmlClient` serves every worker: an endpoint is a controller's base URL
(`https://10.0.1.5`, or `http://127.0.0.1:9000/workers/w1` for the simulator). Per
endpoint it keeps one bearer token (logging in again once on a 401) and one circuit
breaker; `RetryingSender` bounds and retries each request.

With a `CmlTrust`, an endpoint gets no request until `admit` let it in: the admission
gives the endpoint its own TLS verification (one httpx client per SSL context, so a pinned
certificate is checked at the handshake, before any byte of a request) and its worker's
credentials.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from aws_lambda_powertools import Logger

from cmlfleet.cml.breaker import Circuit, CircuitBreaker
from cmlfleet.cml.errors import CmlError, NotAdmittedError, UntrustedCertificateError
from cmlfleet.cml.models import CmlCredentials, SystemStats, parse_lab, parse_system_stats
from cmlfleet.cml.transport import RetryingSender, detail, json_body
from cmlfleet.cml.trust import Admission, CmlTrust
from cmlfleet.domain.worker import Worker
from cmlfleet.events.catalog import LabSummary

API = "/api/v0/"
logger = Logger(child=True)

T = TypeVar("T")
Item = TypeVar("Item")


@dataclass
class CmlSharedState:
    """Tokens and circuit records that outlive one `CmlClient`.

    An httpx client and asyncio locks belong to one event loop, and a warm Lambda runs each
    invocation in a new one. Keeping this between invocations saves a login per worker per
    run and keeps a dead worker's circuit open across runs.
    """

    tokens: dict[str, str] = field(default_factory=dict)
    circuits: dict[str, Circuit] = field(default_factory=dict)
    # Whose each token is (worker and pin): an address reused by another worker, or a
    # worker re-pinned, must not be sent a token another host issued.
    holders: dict[str, str] = field(default_factory=dict)


class CmlClient:
    """Talks to many CML controllers; `calls` counts the HTTP requests made, by kind."""

    def __init__(
        self,
        credentials: Callable[[], CmlCredentials],
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.2,
        verify_tls: bool = True,
        trust: CmlTrust | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        lab_concurrency: int = 4,
        max_connections: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # `credentials` is called at each login, so a rotated secret is picked up; an
        # admission's own credentials (its worker's) come first.
        self._credentials = credentials
        self._lab_concurrency = max(1, lab_concurrency)
        self._verify, self._trust = verify_tls, trust
        self._admissions: dict[str, Admission] = {}
        self._http_options: dict[str, Any] = {
            "timeout": float(timeout),
            "transport": transport,
            "headers": {"Accept": "application/json"},
            "limits": httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        }
        # One httpx client per way of verifying (made on first use), kept with that way.
        self._clients: dict[int, tuple[ssl.SSLContext | bool, httpx.AsyncClient]] = {}
        self._sender = RetryingSender(
            timeout=float(timeout),
            retries=retries,
            backoff=backoff,
            max_in_flight=max_connections,
        )
        self._breaker_settings = (breaker_threshold, breaker_cooldown, clock)
        self._breaker = CircuitBreaker(*self._breaker_settings)
        self._tokens: dict[str, str] = {}
        self._holders: dict[str, str] = {}
        self._login_locks: dict[str, asyncio.Lock] = {}
        self.calls: Counter[str] = self._sender.calls

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients = [http for _, http in self._clients.values()]
        self._clients.clear()
        for http in clients:
            await http.aclose()

    def share_state_with(self, shared: CmlSharedState) -> None:
        """Keep tokens and circuits in `shared` (call before the first request)."""
        shared.tokens.update(self._tokens)
        self._tokens = shared.tokens
        self._holders = shared.holders
        self._breaker = CircuitBreaker(*self._breaker_settings, circuits=shared.circuits)

    async def admit(self, worker: Worker, endpoint: str) -> None:
        """Let the worker's endpoint in, as the trust decides; `CmlError` if it may not be.

        The trust is given the worker itself: whether it was imported is part of the decision.
        Without a trust, every endpoint is let in as configured (`verify_tls`).
        """
        if self._trust is None:
            return
        base = _base(endpoint)
        self._admissions.pop(base, None)  # refused now: refused, whatever was let in before
        admission = await self._trust.admission(worker, base)
        holder = f"{worker.worker_id} {admission.pin or ''}"
        if self._holders.get(base) != holder:
            self._tokens.pop(base, None)
            self._holders[base] = holder
        self._admissions[base] = admission

    async def system_information(self, endpoint: str) -> dict[str, Any]:
        """Version and readiness; CML answers it without a login, so it is the cheap probe."""
        base = _base(endpoint)
        async with self._circuit(base):
            body = await self._get(base, "system_information", authenticated=False)
            return _object(base, "system_information", body)

    async def system_stats(self, endpoint: str) -> SystemStats:
        """CPU, memory and disk use of the controller and its computes, and node counts."""
        base = _base(endpoint)
        async with self._circuit(base):
            body = await self._get(base, "system_stats")
            return _parsed(base, "system_stats", parse_system_stats, body)

    async def system_health(self, endpoint: str) -> dict[str, Any]:
        """CML's own health checks (`valid`, per compute and controller), as it sends them."""
        base = _base(endpoint)
        async with self._circuit(base):
            body = await self._get(base, "system_health")
            return _object(base, "system_health", body)

    async def labs(self, endpoint: str) -> list[LabSummary]:
        """Every lab on the controller: the ids, then each lab's details, a few at a time."""
        base = _base(endpoint)
        async with self._circuit(base):
            ids = await self._get(base, "labs", params={"show_all": "true"})
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise CmlError(base, "unexpected labs response (not a list of ids)")
            found = await _bounded(ids, partial(self._lab, base), self._lab_concurrency)
            return [lab for lab in found if lab is not None]

    def circuit_state(self, endpoint: str) -> str:
        """The endpoint's circuit: "closed", "open" or "half-open"."""
        return self._breaker.state(_base(endpoint))

    def forget(self, endpoint: str) -> None:
        """Drop the token and circuit of an endpoint that is gone (a terminated worker)."""
        base = _base(endpoint)
        self._tokens.pop(base, None)
        self._holders.pop(base, None)
        self._admissions.pop(base, None)
        self._login_locks.pop(base, None)
        self._breaker.forget(base)

    async def _lab(self, base: str, lab_id: str) -> LabSummary | None:
        try:
            body = await self._get(base, "lab", f"labs/{quote(lab_id, safe='')}")
        except CmlError as error:
            if error.status == 404:
                return None  # removed between the listing and now: not an error
            raise
        return _parsed(base, "lab", parse_lab, body)

    @asynccontextmanager
    async def _circuit(self, base: str) -> AsyncIterator[None]:
        """One public call as the breaker sees it: admitted, then judged by its outcome."""
        trial = self._breaker.admit(base)
        try:
            yield
        except CmlError as error:
            if error.endpoint_at_fault:
                self._breaker.failed(base)
            else:
                self._breaker.succeeded(base)  # it answered, if not what we hoped
            raise
        except BaseException:
            if trial:
                self._breaker.abandoned(base)
            raise
        else:
            self._breaker.succeeded(base)

    async def _get(
        self,
        base: str,
        kind: str,
        path: str | None = None,
        *,
        params: dict[str, str] | None = None,
        authenticated: bool = True,
    ) -> Any:
        """GET a JSON body; with a login first if needed and a second one after a 401."""
        url = base + API + (path or kind)
        if not authenticated:
            return json_body(base, kind, await self._send(base, kind, "GET", url, params=params))
        token = await self._token(base)
        response = await self._send(base, kind, "GET", url, token=token, params=params)
        if response.status_code == httpx.codes.UNAUTHORIZED:
            # The token expired or the controller restarted: log in again, once.
            token = await self._token(base, stale=token)
            response = await self._send(base, kind, "GET", url, token=token, params=params)
            if response.status_code == httpx.codes.UNAUTHORIZED:
                raise CmlError(base, f"HTTP 401 from {kind} after a fresh login", status=401)
        return json_body(base, kind, response)

    async def _token(self, base: str, stale: str | None = None) -> str:
        """The endpoint's token; a new one only if there is none or `stale` was refused."""
        token = self._tokens.get(base)
        if token is not None and token != stale:
            return token
        # Concurrent lab reads that all meet a 401 must lead to one login, not one each.
        async with self._login_locks.setdefault(base, asyncio.Lock()):
            token = self._tokens.get(base)
            if token is None or token == stale:
                token = await self._authenticate(base)
                self._tokens[base] = token
            return token

    async def _authenticate(self, base: str) -> str:
        admission = self._admissions.get(base)
        source = admission.credentials if admission is not None else self._credentials
        credentials = await asyncio.to_thread(source)  # a secret lookup blocks
        login = {"username": credentials.username, "password": credentials.password}
        url = base + API + "authenticate"
        response = await self._send(base, "authenticate", "POST", url, json=login)
        if response.status_code in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
            raise CmlError(base, "authentication refused", status=response.status_code)
        token = json_body(base, "authenticate", response)
        if not isinstance(token, str) or not token:
            raise CmlError(base, "unexpected authenticate response (no token)")
        return token

    async def _send(
        self, base: str, kind: str, method: str, url: str, **options: Any
    ) -> httpx.Response:
        """One request through the endpoint's own client (and so its TLS verification)."""
        admission = self._admissions.get(base)
        if self._trust is not None and admission is None:
            raise NotAdmittedError(base, "not admitted (admit() it first); nothing was sent")
        verify = admission.verify if admission is not None else self._verify
        try:
            return await self._sender.send(
                self._http_for(verify), base, kind, method, url, **options
            )
        except UntrustedCertificateError as error:
            if admission is None:
                raise
            worker_id = admission.worker_id
            logger.warning(
                "CML certificate refused; nothing sent", worker_id=worker_id, reason=error.reason
            )
            if admission.mode != "pin":
                raise
            raise UntrustedCertificateError(
                base,
                f"its TLS certificate changed since it was pinned ({error.refusal}), nothing "
                f"was sent; if the CML host was reinstalled, re-pin it: DELETE "
                f"/api/workers/{worker_id}/cml-certificate",
                refusal=error.refusal,
            ) from None

    def _http_for(self, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        key = id(verify) if isinstance(verify, ssl.SSLContext) else int(verify)
        known = self._clients.get(key)
        if known is None:
            # The context is kept next to its client, so its id is not reused meanwhile.
            known = (verify, httpx.AsyncClient(verify=verify, **self._http_options))
            self._clients[key] = known
        return known[1]


def _base(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CmlError(endpoint, "not an http(s) URL")
    return endpoint.rstrip("/")


def _object(base: str, kind: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise CmlError(base, f"unexpected {kind} response (not an object)")
    return body


def _parsed(base: str, kind: str, parse: Callable[[Any], T], body: Any) -> T:
    try:
        return parse(body)
    except (ValueError, TypeError) as error:
        raise CmlError(base, f"unexpected {kind} response ({detail(error)})") from None


async def _bounded(
    items: Sequence[Item], call: Callable[[Item], Awaitable[T]], limit: int
) -> list[T]:
    """`call` on every item, `limit` at a time, in order; the first failure stops the rest.

    Workers pull from one shared iterator and look at `failures` before each pull: task
    cancellation alone would let calls that never suspend run on after a failure.
    """
    pending = iter(enumerate(items))
    results: dict[int, T] = {}
    failures: list[BaseException] = []

    async def worker() -> None:
        for index, item in pending:
            if failures:
                return
            try:
                results[index] = await call(item)
            except Exception as error:
                failures.append(error)
                raise

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(limit, len(items))):
                group.create_task(worker())
    except BaseExceptionGroup:
        raise failures[0] from None
    return [results[index] for index in range(len(items))]
