"""Operators on the whole local system: the API through the local origin, EC2 simulated,
events on the SSE stream through the same origin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.ec2sim import Delays
from devstack.fleetstack import FleetStack
from tests.localfleet import running_fleet
from tests.sse_client import SseEvent, SseStream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetStack]:
    # Collectors have their own test; here only commands speak.
    with running_fleet(
        ec2_delays=Delays(boot=1.0, stop=1.0, terminate=1.0), run_schedules=False
    ) as stack:
        yield stack


def bearer(fleet: FleetStack, user: str, role: str) -> dict[str, str]:
    assert fleet.issuer is not None
    return {"Authorization": f"Bearer {fleet.issuer.token(user, role)}"}


def updates_of(stream: SseStream, worker_id: str, until_status: str) -> list[SseEvent]:
    """This worker's events, in arrival order, up to the status update reaching `until_status`."""
    seen: list[SseEvent] = []
    while True:
        event = stream.wait_for(
            lambda e: e.event.startswith("worker.") and e.json()["worker_id"] == worker_id,
            timeout=30,
        )
        seen.append(event)
        data: dict[str, Any] = event.json()["data"]
        if event.event == "worker.status.updated" and data["new_status"] == until_status:
            return seen


def test_a_worker_created_stopped_and_terminated_through_the_api_is_seen_live(
    fleet: FleetStack,
) -> None:
    admin = bearer(fleet, "ada", "admin")
    with SseStream(f"{fleet.url}/api/events/stream", headers=admin) as stream:
        assert stream.next().event == "connected"
        created = httpx.post(
            f"{fleet.url}/api/workers", json={"name": "e2e-api"}, headers=admin, timeout=30
        )
        assert created.status_code == 201, created.text
        worker_id = created.json()["worker_id"]

        launch = updates_of(stream, worker_id, "running")
        assert [(e.event, e.json()["data"].get("new_status")) for e in launch] == [
            ("worker.created", None),
            ("worker.status.updated", "pending"),
            ("worker.status.updated", "running"),
        ]
        assert [e.json()["version"] for e in launch] == [1, 2, 3]

        stopped = httpx.post(f"{fleet.url}/api/workers/{worker_id}/stop", headers=admin)
        assert stopped.status_code == 202, stopped.text
        stopping = updates_of(stream, worker_id, "stopped")
        assert [e.json()["data"]["new_status"] for e in stopping] == ["stopping", "stopped"]
        assert stopping[0].json()["data"]["reason"] == "stop requested by ada"

        terminated = httpx.delete(f"{fleet.url}/api/workers/{worker_id}", headers=admin)
        assert terminated.status_code == 202, terminated.text
        ending = updates_of(stream, worker_id, "terminated")
        kinds = [e.event for e in ending]
        assert kinds[:2] == ["worker.status.updated", "worker.terminated"]
        assert ending[1].json()["data"]["terminated_by"] == "ada"

    all_versions = [e.json()["version"] for e in (*launch, *stopping, *ending)]
    assert all_versions == sorted(all_versions)
    final = httpx.get(f"{fleet.url}/api/workers/{worker_id}", headers=admin).json()
    assert final["status"] == "terminated"
    assert final["version"] == all_versions[-1]


def test_the_origin_routes_like_the_load_balancer(fleet: FleetStack) -> None:
    user = bearer(fleet, "alice", "user")
    assert httpx.get(f"{fleet.url}/api/health").json()["status"] == "ok"  # API
    assert httpx.get(f"{fleet.url}/api/events/health").json() == {"status": "ok"}  # relay
    ticket = httpx.post(f"{fleet.url}/api/events/tickets", headers=user)  # API, not relay
    assert ticket.status_code == 201, ticket.text
    keys = httpx.get(f"{fleet.url}/auth/.well-known/jwks.json").json()  # issuer
    assert keys["keys"][0]["alg"] == "RS256"
    assert httpx.get(f"{fleet.url}/api/docs").status_code == 200


def test_a_user_sees_only_their_workers_through_the_origin(fleet: FleetStack) -> None:
    admin = bearer(fleet, "ada", "admin")
    for name, owner in (("e2e-carol", "carol"), ("e2e-dan", "dan")):
        response = httpx.post(
            f"{fleet.url}/api/workers", json={"name": name, "owner": owner}, headers=admin
        )
        assert response.status_code == 201
    listed = httpx.get(f"{fleet.url}/api/workers", headers=bearer(fleet, "carol", "user"))
    workers = listed.json()["workers"]
    assert [w["name"] for w in workers] == ["e2e-carol"]
    assert workers[0]["instance_id"] is None
