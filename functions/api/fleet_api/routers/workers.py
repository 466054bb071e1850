"""/api/workers: the fleet, and the commands that change it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from cmlfleet.domain.status import WorkerStatus
from cmlfleet.events.catalog import WorkerView
from cmlfleet.services.labs import LabsCommands
from fleet_api.deps import Container, ContainerDep, CurrentPrincipal
from fleet_api.schemas import WorkerCreate, WorkerImport, WorkerLabs, WorkerList

router = APIRouter(prefix="/api/workers", tags=["workers"])
WorkerId = Annotated[str, Path(pattern=r"^w-[0-9a-f]{1,40}$", description="the worker's id")]


@router.get("")
def list_workers(
    principal: CurrentPrincipal,
    container: ContainerDep,
    status_filter: Annotated[WorkerStatus | None, Query(alias="status")] = None,
    owner: Annotated[str | None, Query(max_length=128)] = None,
) -> WorkerList:
    """The workers the caller may see, each with its `version` to merge with the stream."""
    workers = container.commands.list(principal, status=status_filter, owner=owner)
    return WorkerList(workers=workers)


@router.get("/{worker_id}")
def get_worker(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    return container.commands.get(principal, worker_id)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_worker(
    body: WorkerCreate, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    """Launch a new worker from the CML AMI (admin)."""
    return container.commands.create(
        principal,
        name=body.name,
        owner=body.owner,
        instance_type=body.instance_type,
        owner_sub=body.owner_sub,
    )


@router.post("/import", status_code=status.HTTP_201_CREATED)
def import_worker(
    body: WorkerImport, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    """Adopt an existing instance as a worker (admin)."""
    return container.commands.import_instance(
        principal,
        instance_id=body.instance_id,
        name=body.name,
        owner=body.owner,
        owner_sub=body.owner_sub,
    )


@router.post("/{worker_id}/start", status_code=status.HTTP_202_ACCEPTED)
def start_worker(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    """Ask EC2 to start a stopped worker (manager, admin)."""
    return container.commands.start(principal, worker_id)


@router.post("/{worker_id}/stop", status_code=status.HTTP_202_ACCEPTED)
def stop_worker(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    """Ask EC2 to stop a running worker (manager, admin)."""
    return container.commands.stop(principal, worker_id)


@router.delete("/{worker_id}", status_code=status.HTTP_202_ACCEPTED)
def terminate_worker(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerView:
    """Terminate the worker's instance (admin). `worker.terminated` is emitted at once."""
    return container.commands.terminate(principal, worker_id)


@router.get("/{worker_id}/labs")
def get_labs(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerLabs:
    """The worker's labs as last synced (by the schedule or a manual refresh)."""
    snapshot = _labs(container).stored(principal, worker_id)
    return WorkerLabs(
        worker_id=snapshot.worker_id, labs=snapshot.labs, synced_at=snapshot.synced_at
    )


@router.post("/{worker_id}/labs/refresh")
def refresh_labs(
    worker_id: WorkerId, principal: CurrentPrincipal, container: ContainerDep
) -> WorkerLabs:
    """Sync the worker's labs from its CML API now (manager, admin; at most every few s)."""
    snapshot = _labs(container).refresh(principal, worker_id)
    return WorkerLabs(
        worker_id=snapshot.worker_id,
        labs=snapshot.labs,
        synced_at=snapshot.synced_at,
        changed=snapshot.changed,
    )


def _labs(container: Container) -> LabsCommands:
    if container.labs is None:
        raise HTTPException(status_code=503, detail="labs are not configured")
    return container.labs
