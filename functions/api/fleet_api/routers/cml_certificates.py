"""/api/workers/{id}/cml-certificate: the TLS certificate pinned for a worker's CML."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from cmlfleet.domain.certificate import CmlCertificate
from cmlfleet.services.cml_certificates import CmlCertificateCommands
from fleet_api.deps import Container, ContainerDep, CurrentPrincipal
from fleet_api.routers.workers import WorkerId
from fleet_api.schemas import CmlCertificateConfirm, CmlCertificatePublic

router = APIRouter(prefix="/api/workers", tags=["cml certificates"])


@router.get("/{worker_id}/cml-certificate")
def get_cml_certificate(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> CmlCertificatePublic:
    """The pin and its SHA-256 fingerprint, to compare with the CML host's (manager, admin)."""
    return _public(worker_id, _certificates(container).get(principal, worker_id))


@router.post("/{worker_id}/cml-certificate/confirm")
def confirm_cml_certificate(
    worker_id: WorkerId,
    body: CmlCertificateConfirm,
    principal: CurrentPrincipal,
    container: ContainerDep,
) -> CmlCertificatePublic:
    """Trust the pending certificate: its fingerprint must be `sha256` (admin; 409 if not)."""
    pin = _certificates(container).confirm(principal, worker_id, body.sha256)
    return _public(worker_id, pin)


@router.delete("/{worker_id}/cml-certificate")
def repin_cml_certificate(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> CmlCertificatePublic:
    """Forget the pin (the CML host was reinstalled): the next one awaits confirmation (admin)."""
    return _public(worker_id, _certificates(container).repin(principal, worker_id))


def _public(worker_id: str, pin: CmlCertificate | None) -> CmlCertificatePublic:
    if pin is None:
        return CmlCertificatePublic(worker_id=worker_id, state="none")
    return CmlCertificatePublic(
        worker_id=worker_id, state=pin.state, sha256=pin.sha256, fetched_at=pin.fetched_at
    )


def _certificates(container: Container) -> CmlCertificateCommands:
    if container.certificates is None:
        raise HTTPException(status_code=503, detail="CML certificates are not configured")
    return container.certificates
