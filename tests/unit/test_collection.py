"""The scheduled collectors: batching, change suppression, isolation of failing workers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cmlfleet.adapters.cloudwatch import CloudWatchLoadReader
from cmlfleet.adapters.repository import InMemoryWorkerRepository
from cmlfleet.cml.errors import CmlError, NotAdmittedError
from cmlfleet.cml.models import SystemStats
from cmlfleet.domain.load import MetricsPolicy, MetricsSample, apply_labs, apply_metrics, diff_labs
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.events.catalog import LabSummary, WorkerLabsUpdated, WorkerMetricsUpdated
from cmlfleet.services.collection import collect_metrics, refresh_labs

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def running_worker(index: int, owner: str = "alice") -> Worker:
    return register_worker(
        name=f"w{index}",
        owner=owner,
        now=NOW - timedelta(hours=1),
        instance_id=f"i-{index:017x}",
        ec2_state="running",
    ).worker


def fleet(count: int) -> InMemoryWorkerRepository:
    repository = InMemoryWorkerRepository()
    for index in range(count):
        worker = running_worker(index)
        repository.save(worker, [], expected_version=0)
    return repository


def lab(lab_id: str, state: str = "STARTED", nodes: int = 3) -> LabSummary:
    return LabSummary(lab_id=lab_id, title=f"lab {lab_id}", state=state, node_count=nodes)


class FakeCml:
    """CML answers per endpoint; an endpoint in `broken` fails, one in `hanging` never answers."""

    def __init__(self, *, broken: set[str] = frozenset(), hanging: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.broken, self.hanging = broken, hanging
        self.cpu = 20.0
        self.labs_by_endpoint: dict[str, list[LabSummary]] = {}
        self.calls = 0
        self.refused: set[str] = set()  # endpoints not admitted (no call may follow)

    async def admit(self, worker: Worker, endpoint: str) -> None:
        if endpoint in self.refused:
            raise NotAdmittedError(endpoint, "awaits an admin's confirmation")

    async def _answer(self, endpoint: str) -> None:
        self.calls += 1
        if endpoint in self.hanging:
            await asyncio.sleep(3600)
        if endpoint in self.broken:
            raise CmlError(endpoint, "HTTP 500 from system_stats")

    async def system_stats(self, endpoint: str) -> SystemStats:
        await self._answer(endpoint)
        return SystemStats(
            cpu_percent=self.cpu, memory_percent=50, disk_percent=30, running_nodes=4, total_nodes=6
        )

    async def labs(self, endpoint: str) -> list[LabSummary]:
        await self._answer(endpoint)
        return self.labs_by_endpoint.get(endpoint, [])


class NoCloudWatch:
    calls = 0

    def latest(self, instance_ids: list[str], now: datetime) -> dict[str, Any]:
        return {}


def endpoint(worker: Worker) -> str:
    return f"http://127.0.0.1:1/workers/{worker.instance_id}"


def collect(repository: InMemoryWorkerRepository, cml: FakeCml, **options: Any) -> Any:
    return asyncio.run(
        collect_metrics(
            repository,
            NoCloudWatch(),  # type: ignore[arg-type]
            cml,
            endpoint_for=endpoint,
            now=options.pop("now", NOW),
            source="urn:test",
            **options,
        )
    )


# ---- batching ----------------------------------------------------------------------------


@mock_aws
def test_a_thousand_workers_cost_six_get_metric_data_calls() -> None:
    cloudwatch = boto3.client("cloudwatch")
    ids = [f"i-{n:017x}" for n in range(1000)]
    for instance_id in ids[:3]:
        cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                    "Timestamp": datetime.now(UTC) - timedelta(minutes=1),
                    "Value": 42.0,
                }
            ],
        )
    reader = CloudWatchLoadReader(cloudwatch)
    loads = reader.latest(ids, datetime.now(UTC))
    assert reader.calls == 6  # 3,000 queries, 500 per call
    assert loads[ids[0]].cpu == 42.0
    assert loads[ids[0]].memory is None
    assert ids[500] not in loads


@mock_aws
def test_the_newest_datapoint_wins() -> None:
    cloudwatch = boto3.client("cloudwatch")
    now = datetime.now(UTC)
    for minutes_ago, value in ((5, 10.0), (1, 77.0), (3, 30.0)):
        cloudwatch.put_metric_data(
            Namespace="CWAgent",
            MetricData=[
                {
                    "MetricName": "mem_used_percent",
                    "Dimensions": [{"Name": "InstanceId", "Value": "i-0000000000000000a"}],
                    "Timestamp": now - timedelta(minutes=minutes_ago),
                    "Value": value,
                }
            ],
        )
    loads = CloudWatchLoadReader(cloudwatch).latest(["i-0000000000000000a"], now)
    assert loads["i-0000000000000000a"].memory == 77.0


# ---- change suppression ------------------------------------------------------------------


def test_the_first_sample_is_saved_and_announced() -> None:
    repository = fleet(2)
    result = collect(repository, FakeCml())
    assert (result.workers, result.saved, result.unchanged) == (2, 2, 0)
    assert [e.type for e in repository.events] == ["worker.metrics.updated"] * 2
    stored = repository.list_workers()[0]
    assert (stored.cpu_utilization, stored.running_nodes, stored.total_nodes) == (20.0, 4, 6)


def test_a_sample_that_barely_moved_is_neither_saved_nor_announced() -> None:
    repository, cml = fleet(3), FakeCml()
    collect(repository, cml)
    cml.cpu = 23.0  # under the 5-point threshold
    result = collect(repository, cml, now=NOW + timedelta(minutes=1))
    assert (result.saved, result.unchanged) == (0, 3)
    assert len(repository.events) == 3


def test_a_sample_past_the_threshold_is_saved_and_announced() -> None:
    repository, cml = fleet(1), FakeCml()
    collect(repository, cml)
    cml.cpu = 60.0
    result = collect(repository, cml, now=NOW + timedelta(minutes=1))
    assert result.saved == 1
    assert repository.events[-1].data["cpu_utilization"] == 60.0


def test_the_keepalive_announces_unchanged_numbers_after_its_interval() -> None:
    repository, cml = fleet(1), FakeCml()
    collect(repository, cml, policy=MetricsPolicy(keepalive=timedelta(minutes=10)))
    quiet = collect(repository, cml, now=NOW + timedelta(minutes=9))
    later = collect(repository, cml, now=NOW + timedelta(minutes=10))
    assert (quiet.saved, later.saved) == (0, 1)


def test_only_running_workers_are_measured() -> None:
    repository = fleet(2)
    stopped = running_worker(99).model_copy(update={"status": WorkerStatus.STOPPED})
    repository.save(stopped, [], expected_version=0)
    assert collect(repository, FakeCml()).workers == 2


# ---- isolation ---------------------------------------------------------------------------


def test_a_failing_worker_is_reported_and_the_others_are_still_measured() -> None:
    repository = fleet(4)
    broken = endpoint(repository.list_workers()[1])
    result = collect(repository, FakeCml(broken={broken}))
    victim = repository.list_workers()[1].worker_id
    assert list(result.failed) == [victim]
    assert result.failed[victim].endswith("HTTP 500 from system_stats")
    assert (result.saved, result.unchanged) == (3, 1)  # with no numbers, nothing to save
    assert repository.get(victim).running_nodes is None  # type: ignore[union-attr]


def test_m3_a_worker_not_admitted_is_never_called_and_the_others_are_measured() -> None:
    repository, cml = fleet(3), FakeCml()
    refused = repository.list_workers()[0]
    cml.refused.add(endpoint(refused))
    result = collect(repository, cml)
    assert list(result.failed) == [refused.worker_id]
    assert "awaits an admin's confirmation" in result.failed[refused.worker_id]
    assert cml.calls == 2  # the refused worker's CML got no call
    labs = asyncio.run(
        refresh_labs(repository, cml, endpoint_for=endpoint, now=NOW, source="urn:test")
    )
    assert list(labs.failed) == [refused.worker_id]
    assert cml.calls == 4


def test_a_hanging_worker_costs_the_run_only_its_deadline() -> None:
    repository = fleet(5)
    hung = repository.list_workers()[2]
    result = collect(repository, FakeCml(hanging={endpoint(hung)}), cml_deadline=0.2, concurrency=2)
    assert result.failed == {hung.worker_id: "CML did not answer within 0.2 s"}
    others = [w for w in repository.list_workers() if w.worker_id != hung.worker_id]
    assert all(w.running_nodes == 4 for w in others)


# ---- labs --------------------------------------------------------------------------------


def test_the_labs_diff_names_added_removed_and_changed_labs() -> None:
    before = [lab("a"), lab("b"), lab("c")]
    after = [lab("a"), lab("b", state="STOPPED"), lab("d")]
    difference = diff_labs(before, after)
    assert (difference.added, difference.removed, difference.changed) == (["d"], ["c"], ["b"])


def test_labs_are_announced_only_when_they_changed() -> None:
    repository, cml = fleet(1), FakeCml()
    worker = repository.list_workers()[0]
    cml.labs_by_endpoint[endpoint(worker)] = [lab("a")]

    def run() -> Any:
        return asyncio.run(
            refresh_labs(repository, cml, endpoint_for=endpoint, now=NOW, source="urn:test")
        )

    first, second = run(), run()
    cml.labs_by_endpoint[endpoint(worker)] = [lab("a"), lab("b")]
    third = run()
    assert (first.saved, second.saved, third.saved) == (1, 0, 1)
    last = repository.events[-1]
    assert last.type == "worker.labs.updated"
    assert (last.data["added"], last.data["trigger"]) == (["b"], "schedule")
    assert repository.list_workers()[0].labs_count == 2


def test_apply_labs_records_the_trigger_and_counts() -> None:
    worker = running_worker(1)
    change = apply_labs(worker, [lab("x")], now=NOW, trigger="manual")
    assert change is not None
    (event,) = change.events
    assert isinstance(event, WorkerLabsUpdated)
    assert event.trigger == "manual"
    assert change.worker.labs_count == 1


def test_an_older_sample_never_overwrites_a_newer_one() -> None:
    worker = running_worker(1)
    newer = apply_metrics(
        worker, MetricsSample(collected_at=NOW, cpu_utilization=50.0), MetricsPolicy()
    )
    assert newer is not None
    older = MetricsSample(collected_at=NOW - timedelta(minutes=30), cpu_utilization=90.0)
    assert apply_metrics(newer.worker, older, MetricsPolicy()) is None
    assert isinstance(newer.events[0], WorkerMetricsUpdated)


@pytest.mark.parametrize("value", [-5.0, 150.0])
def test_an_impossible_answer_counts_as_that_workers_failure(value: float) -> None:
    repository, cml = fleet(2), FakeCml()
    cml.cpu = value  # SystemStats refuses a percentage outside 0-100
    result = collect(repository, cml)
    assert len(result.failed) == 2
    assert all(w.cpu_utilization is None for w in repository.list_workers())


class BrokenCloudWatch:
    calls = 0

    def latest(self, instance_ids: list[str], now: datetime) -> dict[str, Any]:
        raise RuntimeError("CloudWatch throttled us")


def test_a_cloudwatch_failure_still_records_what_cml_says() -> None:
    repository = fleet(2)
    result = asyncio.run(
        collect_metrics(
            repository,
            BrokenCloudWatch(),
            FakeCml(),  # type: ignore[arg-type]
            endpoint_for=endpoint,
            now=NOW,
            source="urn:test",
        )
    )
    assert result.errors == ["CloudWatch: CloudWatch throttled us"]
    assert result.saved == 2
    assert all(w.running_nodes == 4 for w in repository.list_workers())


def test_a_bad_endpoint_template_fails_its_workers_not_the_run() -> None:
    repository = fleet(2)

    def broken(worker: Worker) -> str:
        return "https://{port}".format(**{"private_ip": "x"})

    result = asyncio.run(
        collect_metrics(
            repository,
            NoCloudWatch(),
            FakeCml(),  # type: ignore[arg-type]
            endpoint_for=broken,
            now=NOW,
            source="urn:test",
        )
    )
    assert len(result.failed) == 2
    assert all("bad CML endpoint template" in reason for reason in result.failed.values())


def test_a_save_that_fails_is_that_workers_failure_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    repository = fleet(3)
    victim = repository.list_workers()[0].worker_id
    original = repository.save

    def save(worker: Worker, *args: Any, **kwargs: Any) -> None:
        if worker.worker_id == victim:
            raise RuntimeError("item too large")
        original(worker, *args, **kwargs)

    monkeypatch.setattr(repository, "save", save)
    result = collect(repository, FakeCml())
    assert result.failed == {victim: "save failed: item too large"}
    assert result.saved == 2
