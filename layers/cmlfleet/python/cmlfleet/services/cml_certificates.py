"""The workers' pinned CML certificates as an operator sees them: read, confirm, re-pin.

Managers and admins read a pin (the fingerprint to check on the CML host); only admins
change one. A user sees no pin, even of their own worker: it describes the host, as the
masked fields of the worker view do.
"""

from __future__ import annotations

from cmlfleet.access import Action
from cmlfleet.adapters.repository import WorkerRepository
from cmlfleet.domain.certificate import (
    CertificateMismatchError,
    CmlCertificate,
    awaiting_confirmation,
    confirm,
)
from cmlfleet.identity import Principal
from cmlfleet.services.commands import ForbiddenError, authorize, find_visible


class CmlCertificateCommands:
    def __init__(self, repository: WorkerRepository) -> None:
        self._repository = repository

    def get(self, principal: Principal, worker_id: str) -> CmlCertificate | None:
        """The worker's pin, or None if its CML was never contacted."""
        self._visible(principal, worker_id)
        return self._repository.get_cml_certificate(worker_id)

    def confirm(self, principal: Principal, worker_id: str, sha256: str) -> CmlCertificate:
        """Trust the pending pin, if `sha256` is what the admin read on the CML host."""
        self._visible(principal, worker_id)
        authorize(principal, Action.TRUST_CML_CERTIFICATE)
        current = self._repository.get_cml_certificate(worker_id)
        confirmed = confirm(current, sha256)  # CertificateMismatchError if not the one
        if confirmed == current:
            return confirmed  # confirmed before: the same answer again
        if not self._repository.put_cml_certificate(confirmed, replacing=current):
            raise CertificateMismatchError("the pin changed while confirming; read it again")
        return confirmed

    def repin(self, principal: Principal, worker_id: str) -> CmlCertificate:
        """Forget the pin; the next certificate fetched awaits confirmation like an import's.

        Not trusted on first use again: a changed certificate may be an impostor's, and
        only someone who looked at the CML host can tell.
        """
        self._visible(principal, worker_id)
        authorize(principal, Action.TRUST_CML_CERTIFICATE)
        current = self._repository.get_cml_certificate(worker_id)
        reset = awaiting_confirmation(worker_id)
        if current != reset and not self._repository.put_cml_certificate(reset, replacing=current):
            raise CertificateMismatchError("the pin changed while re-pinning; try again")
        return reset

    def _visible(self, principal: Principal, worker_id: str) -> None:
        find_visible(self._repository, principal, worker_id)
        if not principal.sees_everything:
            raise ForbiddenError(f"role {principal.role} may not see CML certificates")
