"""Whether, and how, the fleet may talk to one worker's CML: its TLS trust and its login.

Before the collectors call a worker, `CmlTrust.admission` says how its handshake is to be
verified (an `ssl.SSLContext`, or nothing) and whose credentials it gets, or refuses it:

- `pin` (the default): trust on first use. At first contact the worker's certificate is
  fetched with a bare TLS handshake (nothing sent) and pinned beside the worker; every
  later connection must present exactly that certificate before any request. An imported
  worker's pin stays `pending` until an admin confirms its fingerprint, and until then it
  is refused: no login, no request. Whether it was imported is the worker's to say (its
  pin marked at import, or its tags), so `admission` takes the worker.
- `ca`: the certificates come from a private CA (`CML_CA_BUNDLE`); verified as usual.
- `off`: nothing verified (`CML_VERIFY_TLS=false`), for a lab without either.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger

from cmlfleet.cml.errors import CmlError, NotAdmittedError
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.domain.certificate import CmlCertificate, first_contact, starting_pin
from cmlfleet.domain.worker import Worker
from cmlfleet.timeutil import utc_now

if TYPE_CHECKING:
    from cmlfleet.adapters.repository import CmlCertificateStore

logger = Logger(child=True)
TrustMode = Literal["pin", "ca", "off"]
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python names no constant for it): a pin is an
# identity, not a promise with an end date, and CML's self-signed certificates do expire.
NO_CHECK_TIME = 0x200000


@dataclass(frozen=True)
class Admission:
    """How `CmlClient` may reach one worker's CML: whose it is, what to verify, which login."""

    worker_id: str
    verify: ssl.SSLContext | bool
    credentials: Callable[[], CmlCredentials]
    mode: TrustMode = "off"
    pin: str | None = None  # the pinned fingerprint; when it changes, old tokens are dropped


class CmlTrust:
    """Admissions to the workers' CML APIs under one trust mode."""

    def __init__(
        self,
        mode: TrustMode,
        credentials_for: Callable[[str], Callable[[], CmlCredentials]],
        *,
        store: CmlCertificateStore | None = None,
        ca_bundle: str | None = None,
        check_hostname: bool = True,
        timeout: float = 5.0,
        fetch: Callable[[str, float], Awaitable[str]] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if mode == "pin" and store is None:
            raise ValueError("pinning needs a store for the pins")
        if mode == "ca" and not ca_bundle:
            raise ValueError("verifying against a CA needs CML_CA_BUNDLE")
        self.mode = mode
        self._credentials_for, self._store, self._timeout = credentials_for, store, timeout
        self._ca = ca_context(ca_bundle, check_hostname) if mode == "ca" and ca_bundle else None
        self._fetch = fetch or fetch_certificate
        self._clock = clock

    async def admission(self, worker: Worker, endpoint: str) -> Admission:
        """How to reach the worker at `endpoint`, or `NotAdmittedError` if not at all yet."""
        worker_id = worker.worker_id
        credentials = self._credentials_for(worker_id)
        if self.mode == "off":
            return Admission(worker_id, False, credentials)
        if self.mode == "ca":
            assert self._ca is not None
            return Admission(worker_id, self._ca, credentials, mode="ca")
        pin = await self._pin(worker, endpoint)
        if not pin.trusted or pin.pem is None:
            logger.info("CML certificate awaits confirmation", worker_id=worker_id)
            raise NotAdmittedError(
                endpoint,
                f"its certificate (SHA-256 {pin.sha256}) awaits an admin's confirmation "
                f"(POST /api/workers/{worker_id}/cml-certificate/confirm); nothing was sent",
            )
        return Admission(
            worker_id, pinned_context(pin.pem), credentials, mode="pin", pin=pin.sha256
        )

    async def _pin(self, worker: Worker, endpoint: str) -> CmlCertificate:
        """The worker's pin; at first contact, its certificate fetched and pinned first.

        The fetch runs on the event loop, bounded by the timeout; the store's reads and
        writes (DynamoDB, milliseconds) in a thread.
        """
        assert self._store is not None
        store, worker_id = self._store, worker.worker_id
        if urlsplit(endpoint).scheme != "https":
            raise NotAdmittedError(
                endpoint, "plain http has no certificate to pin: use https, or CML_VERIFY_TLS=false"
            )
        current = await asyncio.to_thread(store.get_cml_certificate, worker_id)
        if current is not None and current.pem is not None:
            return current
        try:
            pem = await self._fetch(endpoint, self._timeout)
        except TimeoutError:
            raise CmlError(
                endpoint,
                f"cannot fetch its TLS certificate (no TLS handshake within {self._timeout:g} s)",
            ) from None
        except (OSError, ValueError) as error:
            raise CmlError(endpoint, f"cannot fetch its TLS certificate ({error})") from None
        # An imported worker with no pin (imported before imports marked one) stays pending.
        pinned = first_contact(starting_pin(worker, current), worker_id, pem, self._clock())
        if not await asyncio.to_thread(store.put_cml_certificate, pinned, replacing=current):
            # Another collector pinned first: its pin stands, whatever we were shown.
            found = await asyncio.to_thread(store.get_cml_certificate, worker_id)
            if found is None or found.pem is None:
                raise CmlError(endpoint, "its certificate pin changed meanwhile; next run")
            return found
        logger.info(
            "CML certificate pinned at first contact",
            worker_id=worker_id,
            sha256=pinned.sha256,
            state=pinned.state,
        )
        return pinned


async def fetch_certificate(endpoint: str, seconds: float) -> str:
    """The PEM certificate `endpoint` presents: a TLS handshake and nothing else is sent.

    Nothing is verified (this is how the certificate to pin is learnt). It runs on the event
    loop, no thread: a host that accepts the connection and never finishes the handshake
    costs a socket for `seconds` (then `TimeoutError`), not one of the few executor threads,
    and a deadline that cancels it ends it at once. (A host name, not an IP as the default
    endpoint has, is resolved by the loop's resolver, in the executor.)
    """
    parts = urlsplit(endpoint)
    if parts.hostname is None:
        raise ValueError(f"no host in {endpoint}")
    host = parts.hostname
    deadline = asyncio.get_running_loop().time() + seconds
    async with asyncio.timeout_at(deadline):
        _, writer = await asyncio.open_connection(
            host, parts.port or 443, ssl=_unverified_context(), server_hostname=host
        )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        await _close(writer, deadline)
    if not der:
        raise ValueError(f"{endpoint} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der)


async def _close(writer: asyncio.StreamWriter, deadline: float) -> None:
    """Say goodbye (TLS close_notify) until the deadline, then drop the connection."""
    writer.close()
    closed = False
    try:
        async with asyncio.timeout_at(deadline):
            await writer.wait_closed()
        closed = True
    except OSError:
        pass  # the certificate is had: how the host takes the goodbye does not matter
    finally:
        if not closed:
            writer.transport.abort()


@lru_cache(maxsize=1)
def _unverified_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: only to learn the one to pin."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@lru_cache(maxsize=1024)
def pinned_context(pem: str) -> ssl.SSLContext:
    """A client context that accepts exactly the certificate `pem` (or one its key signed).

    The pinned self-signed certificate is the only trust anchor; the name is not checked
    (the worker is reached by IP, and the pin already says who it is).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=pem)
    # A non-self-signed certificate may be pinned too: it is then the end of the chain.
    context.verify_flags = ssl.VerifyFlags(
        context.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN | NO_CHECK_TIME
    )
    return context


def ca_context(ca_bundle: str, check_hostname: bool) -> ssl.SSLContext:
    """A client context that trusts the CAs in the PEM file `ca_bundle`, and only them."""
    context = ssl.create_default_context(cafile=ca_bundle)
    context.check_hostname = check_hostname
    return context
