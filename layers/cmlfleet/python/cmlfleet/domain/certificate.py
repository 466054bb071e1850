"""The TLS certificate a worker's CML presented at first contact: trusted on first use.

CML ships a self-signed certificate, so no CA can vouch for it. The fleet keeps the one a
worker showed first (its pin) and accepts only that one afterwards. A worker the fleet
launched is trusted at first contact; one adopted by `import` runs software the fleet never
checked, so its pin stays `pending` (nothing but the handshake goes to it) until an admin
confirms the fingerprint they read on the CML host. The import marks its pin so before the
worker exists; a worker imported before imports did has no pin at all, and its tags (the
account owner's opt-in) say it was imported all the same (`starting_pin`).

The pin is kept next to the worker, not in it: it is no part of the worker's history and
changes without an event.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from cmlfleet.domain.worker import Worker
from cmlfleet.timeutil import UtcDateTime

PinState = Literal["pending", "pinned"]


class CertificateMismatchError(Exception):
    """The fingerprint given does not match the certificate pinned (or none is yet)."""


class CmlCertificate(BaseModel):
    """A worker's pin: `pending` until trusted, `pinned` once it may be sent credentials."""

    model_config = ConfigDict(frozen=True)

    worker_id: str
    state: PinState
    pem: str | None = None  # None: not fetched yet (an imported worker not yet contacted)
    sha256: str | None = None
    fetched_at: UtcDateTime | None = None

    @property
    def trusted(self) -> bool:
        return self.state == "pinned" and self.pem is not None


def awaiting_confirmation(worker_id: str) -> CmlCertificate:
    """The pin of a worker whose certificate an admin must confirm before any login."""
    return CmlCertificate(worker_id=worker_id, state="pending")


def starting_pin(worker: Worker, current: CmlCertificate | None) -> CmlCertificate | None:
    """The pin first contact starts from: the worker's, or for an imported worker that has
    none (imported before the import marked pins), one awaiting confirmation as if marked."""
    if current is None and worker.imported:
        return awaiting_confirmation(worker.worker_id)
    return current


def first_contact(
    current: CmlCertificate | None, worker_id: str, pem: str, now: datetime
) -> CmlCertificate:
    """The pin after fetching the worker's certificate: trusted unless awaiting confirmation."""
    state: PinState = current.state if current is not None else "pinned"
    return CmlCertificate(
        worker_id=worker_id, state=state, pem=pem, sha256=fingerprint(pem), fetched_at=now
    )


def confirm(current: CmlCertificate | None, sha256: str) -> CmlCertificate:
    """The pin trusted, if `sha256` is the fingerprint of the certificate fetched."""
    if current is None or current.pem is None or current.sha256 is None:
        raise CertificateMismatchError(
            "no certificate fetched from this worker yet: wait for the next collection run"
        )
    if normalized(sha256) != normalized(current.sha256):
        raise CertificateMismatchError(
            f"the worker presented the certificate with SHA-256 {current.sha256}, not {sha256}"
        )
    return current.model_copy(update={"state": "pinned"})


def fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER bytes, as `openssl x509 -fingerprint -sha256` shows it."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalized(sha256: str) -> str:
    """A fingerprint without separators, upper case (colons, spaces and case vary by tool)."""
    return re.sub(r"[:\s]", "", sha256).upper()
