"""A worker's labs on demand: read what is stored, or refresh now from its CML API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cmlfleet.access import Action
from cmlfleet.adapters.repository import WorkerRepository
from cmlfleet.domain.lifecycle import IllegalTransitionError
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker
from cmlfleet.events.catalog import LabSummary
from cmlfleet.identity import Principal
from cmlfleet.services.collection import CmlSource, EndpointFor, refresh_labs
from cmlfleet.services.commands import authorize, find_visible
from cmlfleet.timeutil import utc_now


class ThrottledError(Exception):
    """The worker's labs were refreshed moments ago; try again after `retry_after` s."""

    def __init__(self, worker_id: str, retry_after: float) -> None:
        super().__init__(f"labs of {worker_id} were refreshed moments ago")
        self.retry_after = retry_after


class CmlUnavailableError(Exception):
    """The worker's CML API did not answer usefully; the message says why."""


@dataclass(frozen=True)
class LabsSnapshot:
    worker_id: str
    labs: list[LabSummary]
    synced_at: datetime | None
    changed: bool = False


class LabsCommands:
    def __init__(
        self,
        repository: WorkerRepository,
        cml: Callable[[], AbstractAsyncContextManager[CmlSource]],
        endpoint_for: EndpointFor,
        *,
        source: str,
        min_interval: float = 10.0,
        deadline: float = 20.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._repository, self._cml, self._endpoint_for = repository, cml, endpoint_for
        self._source, self._min_interval, self._deadline = source, min_interval, deadline
        self._clock = clock

    def stored(self, principal: Principal, worker_id: str) -> LabsSnapshot:
        worker = find_visible(self._repository, principal, worker_id)
        return LabsSnapshot(worker.worker_id, worker.labs, worker.labs_synced_at)

    def refresh(self, principal: Principal, worker_id: str) -> LabsSnapshot:
        """Sync the labs now; `worker.labs.updated` goes out only if they changed."""
        worker = find_visible(self._repository, principal, worker_id)
        authorize(principal, Action.REFRESH_LABS)
        if worker.status != WorkerStatus.RUNNING:
            raise IllegalTransitionError(worker, "refresh the labs of")
        if not self._repository.claim_labs_refresh(worker_id, time.time(), self._min_interval):
            raise ThrottledError(worker_id, self._min_interval)
        result = asyncio.run(self._refresh(worker))
        if worker.worker_id in result.failed:
            raise CmlUnavailableError(result.failed[worker.worker_id])
        fresh = self._repository.get(worker_id) or worker
        return LabsSnapshot(fresh.worker_id, fresh.labs, fresh.labs_synced_at, result.saved > 0)

    async def _refresh(self, worker: Worker) -> Any:
        async with self._cml() as cml:
            return await refresh_labs(
                self._repository,
                cml,
                endpoint_for=self._endpoint_for,
                now=self._clock(),
                source=self._source,
                trigger="manual",
                workers=[worker],
                cml_deadline=self._deadline,
            )
