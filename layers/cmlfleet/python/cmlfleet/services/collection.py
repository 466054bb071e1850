"""The scheduled collectors: every running worker's load, and its labs.

One run covers the whole fleet. CloudWatch is read in batches; the CML API of each worker
is called concurrently with a bound and a deadline, so a worker whose CML hangs or fails
costs the run at most its deadline and never fails the others: the result says which
workers failed and why. Each worker is admitted first (`CmlSource.admit`): one whose TLS
certificate is not the pinned one, or still awaits an admin's confirmation, is skipped
before anything is sent to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal, Protocol

from aws_lambda_powertools import Logger

from cmlfleet.adapters.cloudwatch import CloudWatchLoadReader, InstanceLoad
from cmlfleet.adapters.repository import ConcurrentModificationError, WorkerRepository
from cmlfleet.domain.load import MetricsPolicy, MetricsSample, apply_labs, apply_metrics
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Change, Worker
from cmlfleet.events.catalog import LabSummary
from cmlfleet.services.changes import save_change

logger = Logger(child=True)
DEFAULT_POLICY = MetricsPolicy()


class NodeStats(Protocol):
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None
    running_nodes: int
    total_nodes: int


class CmlSource(Protocol):
    """The part of the CML client the collectors use."""

    async def admit(self, worker: Worker, endpoint: str) -> None: ...

    async def system_stats(self, endpoint: str) -> Any: ...

    async def labs(self, endpoint: str) -> list[LabSummary]: ...


EndpointFor = Callable[[Worker], str | None]


@dataclass
class RunResult:
    """What one collection did; returned by the Lambda and logged."""

    workers: int = 0
    saved: int = 0
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # run-wide problems (not one worker's)
    aws_calls: int = 0
    cml_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def running_workers(repository: WorkerRepository) -> list[Worker]:
    return [
        w
        for w in repository.list_workers()
        if w.status == WorkerStatus.RUNNING and w.instance_id is not None
    ]


async def collect_metrics(
    repository: WorkerRepository,
    cloudwatch: CloudWatchLoadReader,
    cml: CmlSource,
    *,
    endpoint_for: EndpointFor,
    now: datetime,
    source: str,
    policy: MetricsPolicy = DEFAULT_POLICY,
    concurrency: int = 25,
    cml_deadline: float = 10.0,
) -> RunResult:
    workers = running_workers(repository)
    result = RunResult(workers=len(workers))
    if not workers:
        return result
    calls_before = cloudwatch.calls
    try:
        loads = await asyncio.to_thread(
            cloudwatch.latest, [w.instance_id for w in workers if w.instance_id], now
        )
    except Exception as error:  # CloudWatch down: still record what CML says
        logger.exception("reading CloudWatch failed; continuing with the CML numbers")
        result.errors.append(f"CloudWatch: {error}")
        loads = {}
    result.aws_calls = cloudwatch.calls - calls_before
    stats = await _each(
        workers,
        cml,
        cml.system_stats,
        endpoint_for,
        result,
        concurrency,
        cml_deadline,
    )
    for worker in workers:
        load = loads.get(worker.instance_id or "", InstanceLoad())
        sample = _sample(now, load, stats.get(worker.worker_id))
        saved = await _save_isolated(
            result,
            repository,
            worker,
            partial(_metrics_change, sample=sample, policy=policy),
            source,
        )
        if saved:
            result.saved += 1
        else:
            result.unchanged += 1
    return result


async def refresh_labs(
    repository: WorkerRepository,
    cml: CmlSource,
    *,
    endpoint_for: EndpointFor,
    now: datetime,
    source: str,
    trigger: Literal["schedule", "manual", "import"] = "schedule",
    workers: list[Worker] | None = None,
    concurrency: int = 25,
    cml_deadline: float = 20.0,
) -> RunResult:
    workers = running_workers(repository) if workers is None else workers
    result = RunResult(workers=len(workers))
    labs = await _each(
        workers,
        cml,
        cml.labs,
        endpoint_for,
        result,
        concurrency,
        cml_deadline,
    )
    for worker in workers:
        if worker.worker_id not in labs:
            continue
        found: list[LabSummary] = labs[worker.worker_id]
        saved = await _save_isolated(
            result,
            repository,
            worker,
            partial(apply_labs, labs=found, now=now, trigger=trigger),
            source,
        )
        if saved:
            result.saved += 1
        else:
            result.unchanged += 1
    return result


async def _each(
    workers: list[Worker],
    cml: CmlSource,
    call: Callable[[str], Awaitable[Any]],
    endpoint_for: EndpointFor,
    result: RunResult,
    concurrency: int,
    deadline: float,
) -> dict[str, Any]:
    """`call(endpoint)` for every worker admitted, `concurrency` at a time, each bounded."""
    gate = asyncio.Semaphore(concurrency)
    answers: dict[str, Any] = {}

    async def admitted_call(worker: Worker, endpoint: str) -> Any:
        await cml.admit(worker, endpoint)  # the worker, not its id: was it imported?
        return await call(endpoint)

    async def one(worker: Worker) -> None:
        try:
            endpoint = endpoint_for(worker)
        except (KeyError, ValueError, IndexError) as error:
            result.failed[worker.worker_id] = f"bad CML endpoint template: {error!r}"
            return
        if endpoint is None:
            result.failed[worker.worker_id] = "no CML endpoint (no private IP yet)"
            return
        async with gate:
            result.cml_calls += 1
            try:
                answers[worker.worker_id] = await asyncio.wait_for(
                    admitted_call(worker, endpoint), deadline
                )
            except TimeoutError:
                result.failed[worker.worker_id] = f"CML did not answer within {deadline:g} s"
            except Exception as error:  # one worker's failure is reported, never raised
                result.failed[worker.worker_id] = str(error) or type(error).__name__

    await asyncio.gather(*(one(worker) for worker in workers))
    return answers


def _sample(now: datetime, load: InstanceLoad, stats: Any) -> MetricsSample:
    return MetricsSample(
        collected_at=now,
        cpu_utilization=_percent(load.cpu if load.cpu is not None else _get(stats, "cpu_percent")),
        memory_utilization=_percent(
            load.memory if load.memory is not None else _get(stats, "memory_percent")
        ),
        storage_utilization=_percent(
            load.disk if load.disk is not None else _get(stats, "disk_percent")
        ),
        running_nodes=_get(stats, "running_nodes"),
        total_nodes=_get(stats, "total_nodes"),
    )


async def _save_isolated(
    result: RunResult,
    repository: WorkerRepository,
    worker: Worker,
    decide: Callable[[Worker], Change | None],
    source: str,
) -> bool:
    """Save one worker's change; a failure is that worker's, never the run's."""
    try:
        return await asyncio.to_thread(_save_with_retries, repository, worker, decide, source)
    except Exception as error:
        logger.exception("saving a worker failed", worker_id=worker.worker_id)
        result.failed[worker.worker_id] = f"save failed: {error}"
        return False


def _metrics_change(
    worker: Worker, *, sample: MetricsSample, policy: MetricsPolicy
) -> Change | None:
    return apply_metrics(worker, sample, policy)


def _get(stats: Any, name: str) -> Any:
    return getattr(stats, name, None) if stats is not None else None


def _percent(value: float | None) -> float | None:
    return None if value is None else round(min(max(float(value), 0.0), 100.0), 1)


def _save_with_retries(
    repository: WorkerRepository,
    worker: Worker,
    decide: Callable[[Worker], Change | None],
    source: str,
) -> bool:
    """Save the worker's change; a worker that stopped running meanwhile is left alone."""
    try:
        saved = save_change(
            repository,
            worker,
            lambda current: decide(current) if current.status == WorkerStatus.RUNNING else None,
            source=source,
        )
    except ConcurrentModificationError:
        logger.warning("gave up saving after concurrent writes", worker_id=worker.worker_id)
        return False
    return saved.change is not None
