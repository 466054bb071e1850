"""One HTTP exchange with a CML controller: bounded in time, retried when retrying can help.

Connection errors, timeouts and 5xx are retried with exponential backoff (no jitter: the
retries of different workers go to different hosts, so they do not pile up on one);
4xx never, as asking again cannot change the answer, and a certificate that fails
verification never: nothing was sent, and the next handshake would show the same one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from typing import Any

import httpx

from cmlfleet.cml.errors import CmlError, UntrustedCertificateError


class RetryingSender:
    """Sends requests for `CmlClient`; `calls` counts every attempt, by kind."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_in_flight: int,
    ) -> None:
        self._timeout, self._retries, self._backoff = timeout, max(0, retries), backoff
        self._max_in_flight = max(1, max_in_flight)
        self._slots: asyncio.Semaphore | None = None
        self.calls: Counter[str] = Counter()

    async def send(
        self,
        http: httpx.AsyncClient,
        base: str,
        kind: str,
        method: str,
        url: str,
        *,
        token: str | None = None,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """The first response below 500, or `CmlError` once the retries are spent.

        `http` is the client to send with: the one verifying this endpoint's certificate.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else None
        failure = CmlError(base, f"no attempt made at {kind}")
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                # Queue here, before the clock starts: time spent waiting behind our own
                # requests says nothing about the controller and must not time it out.
                async with self._in_flight():
                    self.calls[kind] += 1
                    # httpx's timeouts are per phase; this one bounds the whole exchange,
                    # so a server trickling bytes cannot hold a poll past `timeout` either.
                    async with asyncio.timeout(self._timeout):
                        response = await http.request(
                            method, url, headers=headers, params=params, json=json
                        )
            except (TimeoutError, httpx.TimeoutException):
                failure = CmlError(base, f"timed out after {self._timeout} s")
            except httpx.ConnectError as error:
                refusal = certificate_refusal(error)
                if refusal is not None:
                    raise UntrustedCertificateError(
                        base,
                        f"TLS certificate refused ({refusal}); nothing was sent",
                        refusal=refusal,
                    ) from None
                failure = CmlError(base, f"cannot connect ({detail(error)})")
            except httpx.TransportError as error:
                failure = CmlError(base, f"{kind} failed ({detail(error)})")
            else:
                if response.status_code < 500:
                    return response
                status = response.status_code
                failure = CmlError(base, f"HTTP {status} from {kind}", status=status)
        raise failure

    def _in_flight(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on first use, inside the event loop that uses it
            self._slots = asyncio.Semaphore(self._max_in_flight)
        return self._slots


def json_body(base: str, kind: str, response: httpx.Response) -> Any:
    """The JSON of a 2xx response; any other status or invalid JSON is a `CmlError`."""
    if not response.is_success:
        status = response.status_code
        raise CmlError(base, f"HTTP {status} from {kind}", status=status)
    try:
        return response.json()
    except ValueError:
        raise CmlError(base, f"invalid JSON from {kind}") from None


def certificate_refusal(error: BaseException) -> str | None:
    """OpenSSL's reason if `error` comes from a certificate that failed verification."""
    seen: BaseException | None = error
    for _ in range(8):  # httpx wraps httpcore's error, which wraps ssl's
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or "verification failed")
        seen = seen.__cause__ or seen.__context__
    return None


def detail(error: Exception) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
