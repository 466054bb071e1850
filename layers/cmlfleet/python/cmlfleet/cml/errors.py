"""What can go wrong when CML Fleet talks to a CML controller, said in one short line."""

from __future__ import annotations


class CmlError(Exception):
    """A call to one CML endpoint failed; `reason` says why ("timed out after 5.0 s")."""

    def __init__(self, endpoint: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason
        self.status = status

    @property
    def endpoint_at_fault(self) -> bool:
        """True if the endpoint is unreachable or broken, not merely saying no (a 4xx).

        Only these failures count towards the circuit breaker: a refused login or a missing
        lab is an answer from a healthy controller, and cutting it off would not help.
        """
        return self.status is None or self.status >= 500


class CircuitOpenError(CmlError):
    """The endpoint failed too often lately; the call was refused without any request."""


class UntrustedCertificateError(CmlError):
    """The endpoint's TLS certificate failed verification: nothing was sent, nor retried.

    Under pinning this means the certificate changed since first contact. Not the
    endpoint's ill health either, so the circuit breaker leaves it alone (and each run
    keeps saying why, rather than "circuit open").
    """

    def __init__(self, endpoint: str, reason: str, *, refusal: str = "") -> None:
        super().__init__(endpoint, reason)
        self.refusal = refusal  # OpenSSL's words ("self-signed certificate")

    @property
    def endpoint_at_fault(self) -> bool:
        return False


class NotAdmittedError(CmlError):
    """The worker may not be sent anything yet (awaiting confirmation, or nothing to pin)."""

    @property
    def endpoint_at_fault(self) -> bool:
        return False  # our decision, not the endpoint's failure
