"""A worker's labs through the API: stored labs, manual refresh, its roles and throttle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from cmlfleet.cml.client import CmlClient
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.domain.worker import Worker
from cmlfleet.services.labs import LabsCommands
from devstack.cmlsim import CmlSimulator
from tests.api.conftest import Api


@pytest.fixture
def cml() -> CmlSimulator:
    return CmlSimulator(username="admin", password="secret-password")


@pytest.fixture
def labs_api(api: Api, cml: CmlSimulator) -> Api:
    """The API with manual refresh wired to simulated CML hosts (in-process, no sockets)."""

    @asynccontextmanager
    async def client() -> AsyncIterator[CmlClient]:
        async with CmlClient(
            lambda: CmlCredentials("admin", "secret-password"),
            transport=httpx.ASGITransport(app=cml.app),
            timeout=2,
            retries=0,
        ) as session:
            yield session

    def endpoint(worker: Worker) -> str | None:
        return cml.worker_url(worker.instance_id) if worker.instance_id else None

    api.container.labs = LabsCommands(
        api.container.commands._repository, client, endpoint, source="urn:test", min_interval=60
    )
    return api


def running_worker(api: Api, cml: CmlSimulator, owner: str = "alice") -> dict[str, Any]:
    worker = api.create_worker(owner=owner)
    api.set_status(worker["worker_id"], "running")
    cml.add_worker(worker["instance_id"], seed=7)
    return worker


def test_a_manager_refreshes_and_gets_the_current_labs(labs_api: Api, cml: CmlSimulator) -> None:
    worker = running_worker(labs_api, cml)
    response = labs_api.client.post(
        f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.manager
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = set(cml.worker(worker["instance_id"]).labs)
    assert {lab["lab_id"] for lab in body["labs"]} == expected
    assert body["changed"] is True
    stored = labs_api.client.get(
        f"/api/workers/{worker['worker_id']}/labs", headers=labs_api.user("alice")
    )
    assert stored.json()["labs"] == body["labs"]


def test_a_refresh_that_finds_no_change_announces_nothing(labs_api: Api, cml: CmlSimulator) -> None:
    worker = running_worker(labs_api, cml)
    repository = labs_api.container.commands._repository
    labs_api.client.post(f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.admin)
    labs_api.container.labs._min_interval = 0  # type: ignore[union-attr]
    again = labs_api.client.post(
        f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.admin
    )
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert repository.get(worker["worker_id"]).version == 3  # created, running, labs


def test_a_second_refresh_within_the_interval_is_throttled(
    labs_api: Api, cml: CmlSimulator
) -> None:
    worker = running_worker(labs_api, cml)
    url = f"/api/workers/{worker['worker_id']}/labs/refresh"
    assert labs_api.client.post(url, headers=labs_api.manager).status_code == 200
    second = labs_api.client.post(url, headers=labs_api.admin)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "throttled"
    assert second.headers["retry-after"] == "60"


@pytest.mark.parametrize(("who", "status"), [("alice", 403), ("bob", 404)])
def test_users_may_not_refresh(labs_api: Api, cml: CmlSimulator, who: str, status: int) -> None:
    worker = running_worker(labs_api, cml, owner="alice")
    response = labs_api.client.post(
        f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.user(who)
    )
    assert response.status_code == status


def test_a_worker_that_is_not_running_has_no_labs_to_refresh(
    labs_api: Api, cml: CmlSimulator
) -> None:
    worker = labs_api.create_worker()
    response = labs_api.client.post(
        f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.admin
    )
    assert response.status_code == 409


def test_an_unreachable_cml_is_a_502_that_says_so(labs_api: Api, cml: CmlSimulator) -> None:
    worker = running_worker(labs_api, cml)
    cml.set_fault(worker["instance_id"], "error")
    response = labs_api.client.post(
        f"/api/workers/{worker['worker_id']}/labs/refresh", headers=labs_api.admin
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "cml_unavailable"


def test_a_user_reads_only_their_own_workers_labs(labs_api: Api, cml: CmlSimulator) -> None:
    worker = running_worker(labs_api, cml, owner="alice")
    url = f"/api/workers/{worker['worker_id']}/labs"
    assert labs_api.client.get(url, headers=labs_api.user("alice")).status_code == 200
    assert labs_api.client.get(url, headers=labs_api.user("bob")).status_code == 404
