"""The collectors on the whole local system: schedules from template.yaml (sped up), the
simulated CML hosts and CloudWatch datapoints, events on the stream through the origin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmlfleet import bootstrap
from devstack.fleetstack import FleetStack
from tests.localfleet import running_fleet
from tests.sse_client import SseStream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetStack]:
    # metrics every 2 s, labs every 10 s
    with running_fleet(demo_workers=2, schedule_speedup=30) as stack:
        yield stack


def test_metrics_and_labs_of_the_demo_fleet_arrive_on_their_own(fleet: FleetStack) -> None:
    workers = {w.worker_id: w for w in bootstrap.worker_repository().list_workers()}
    assert len(workers) == 2
    metrics: set[str] = set()
    labs: set[str] = set()
    assert fleet.issuer is not None
    token = fleet.issuer.token("max", "manager")
    with SseStream(
        f"{fleet.url}/api/events/stream", headers={"Authorization": f"Bearer {token}"}
    ) as stream:
        stream.next()
        kinds = ("worker.metrics.updated", "worker.metrics.batch", "worker.labs.updated")
        while metrics != set(workers) or labs != set(workers):
            event = stream.wait_for(lambda e: e.event in kinds, timeout=60)
            if event.event == "worker.labs.updated":
                labs.add(event.json()["data"]["worker_id"])
                assert event.json()["data"]["trigger"] == "schedule"
                continue
            # The relay coalesces metrics per client into batches: unpack them.
            body = event.json()
            for wire in body["events"] if event.event == "worker.metrics.batch" else [body]:
                data = wire["data"]
                metrics.add(data["worker_id"])
                assert 0 <= data["cpu_utilization"] <= 100
                assert data["total_nodes"] >= data["running_nodes"] >= 0
    runner = fleet.stack.schedules["MetricsCollectorFunction"]  # type: ignore[union-attr]
    assert runner.last_result["failed"] == {}


def test_a_collection_run_reports_a_worker_whose_cml_fails_and_measures_the_rest(
    fleet: FleetStack,
) -> None:
    assert fleet.cml is not None
    assert fleet.stack is not None
    victim = bootstrap.worker_repository().list_workers()[0]
    assert victim.instance_id is not None
    fleet.cml.set_fault(victim.instance_id, "error")
    try:
        result = fleet.stack.functions["MetricsCollectorFunction"].invoke({})
    finally:
        fleet.cml.set_fault(victim.instance_id, "none")
    assert list(result["failed"]) == [victim.worker_id]
    assert "500" in result["failed"][victim.worker_id]
    assert result["workers"] == 2
