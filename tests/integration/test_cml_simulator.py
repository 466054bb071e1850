"""The CML simulator under real uvicorn, read by our client and by Cisco's virl2-client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from cmlfleet.cml import CmlClient, CmlCredentials, CmlError, SystemStats
from cmlfleet.events.catalog import LabSummary
from devstack.cmlsim import CmlSimulator

T = TypeVar("T")
LOGIN = CmlCredentials("admin", "admin-password")


@pytest.fixture(scope="module")
def simulator() -> Iterator[CmlSimulator]:
    simulator = CmlSimulator().start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def worker(simulator: CmlSimulator, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh controller for each test, removed afterwards."""
    key = request.node.name.removeprefix("test_")[:48]
    url = simulator.add_worker(key, seed=2024)
    try:
        yield url
    finally:
        simulator.remove_worker(key)


def key_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def with_client(call: Any, **options: Any) -> Any:
    async with CmlClient(lambda: LOGIN, **options) as client:
        return await call(client)


def stats_of(url: str, **options: Any) -> SystemStats:
    result: SystemStats = run(with_client(lambda c: c.system_stats(url), **options))
    return result


def labs_of(url: str) -> list[LabSummary]:
    result: list[LabSummary] = run(with_client(lambda c: c.labs(url)))
    return result


def test_the_simulator_serves_a_worker_under_its_own_prefix_on_a_real_port(
    simulator: CmlSimulator, worker: str
) -> None:
    assert simulator.port
    assert worker == f"http://127.0.0.1:{simulator.port}/workers/{key_of(worker)}"
    information = run(with_client(lambda c: c.system_information(worker)))
    assert information == {
        "version": "2.9.0",
        "ready": True,
        "allow_ssh_pubkey_auth": False,
        "oui": "52:54:00:00:00:00",
    }
    missing = httpx.get(f"{simulator.url}/workers/nobody/api/v0/system_information")
    assert missing.status_code == 404


def test_the_client_reads_stats_and_labs_as_the_simulator_holds_them(
    simulator: CmlSimulator, worker: str
) -> None:
    cml = simulator.worker(key_of(worker))
    stats = stats_of(worker)
    labs = labs_of(worker)
    assert stats.running_nodes == len(cml.running_nodes())
    assert stats.compute_count == 1
    assert stats.memory_percent == round(100 * cml.memory_used() / cml.memory_total, 2)
    assert {(lab.lab_id, lab.title, lab.state, lab.node_count) for lab in labs} == {
        (lab.id, lab.title, lab.state, len(lab.nodes)) for lab in cml.labs.values()
    }
    assert all(lab.owner == "admin" and lab.modified_at is not None for lab in labs)


def test_a_login_without_the_password_is_refused_with_403(worker: str) -> None:
    refused = httpx.post(
        f"{worker}/api/v0/authenticate", json={"username": "admin", "password": "guess"}
    )
    assert refused.status_code == 403
    assert refused.json() == {"code": 403, "description": "Authentication failed!"}
    assert httpx.get(f"{worker}/api/v0/system_stats").status_code == 401


def test_stats_move_after_a_tick(simulator: CmlSimulator, worker: str) -> None:
    before = stats_of(worker)
    simulator.tick(60)
    after = stats_of(worker)
    assert after.cpu_percent != before.cpu_percent
    assert after.memory_percent != before.memory_percent


def test_a_simulator_can_tick_by_itself() -> None:
    simulator = CmlSimulator().start(tick_every=0.02)
    try:
        url = simulator.add_worker("drifting")
        first = simulator.worker("drifting").now
        deadline = time.monotonic() + 5
        while simulator.worker("drifting").now == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert simulator.worker("drifting").now > first
        assert stats_of(url).compute_count == 1
    finally:
        simulator.stop()


def test_labs_come_go_start_and_stop_over_ticks(simulator: CmlSimulator, worker: str) -> None:
    def snapshot() -> set[tuple[str, str, int]]:
        return {(lab.lab_id, lab.state, lab.node_count) for lab in labs_of(worker)}

    seen = [snapshot()]
    for _ in range(8):
        simulator.tick(600)
        seen.append(snapshot())
    changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    ids = [{lab_id for lab_id, _, _ in labs} for labs in seen]
    assert changes >= 4
    assert any(a != b for a, b in itertools.pairwise(ids))  # labs added or removed


def test_one_seed_and_one_series_of_ticks_give_one_history(simulator: CmlSimulator) -> None:
    twins = [simulator.add_worker(f"twin-{n}", seed=7) for n in range(2)]
    try:
        for _ in range(5):
            simulator.tick(300)
        assert labs_of(twins[0]) == labs_of(twins[1])
        assert stats_of(twins[0]) == stats_of(twins[1])
    finally:
        for url in twins:
            simulator.remove_worker(key_of(url))


def test_a_hanging_worker_costs_the_client_its_timeout(
    simulator: CmlSimulator, worker: str
) -> None:
    simulator.set_fault(key_of(worker), "hang")
    started = time.monotonic()
    with pytest.raises(CmlError, match=r"timed out after 0\.2 s"):
        stats_of(worker, timeout=0.2, retries=0)
    assert time.monotonic() - started < 2
    simulator.set_fault(key_of(worker), "none")
    assert stats_of(worker).compute_count == 1


def test_an_erroring_worker_is_an_http_500(simulator: CmlSimulator, worker: str) -> None:
    simulator.set_fault(key_of(worker), "error")

    async def scenario(client: CmlClient) -> None:
        with pytest.raises(CmlError, match="HTTP 500 from system_information") as caught:
            await client.system_information(worker)
        assert caught.value.status == 500
        assert client.calls["system_information"] == 2  # retried once

    run(with_client(scenario, retries=1, backoff=0.01))


def test_a_worker_refusing_logins_is_authentication_refused(
    simulator: CmlSimulator, worker: str
) -> None:
    async def scenario(client: CmlClient) -> None:
        await client.system_stats(worker)  # logged in, token cached
        simulator.set_fault(key_of(worker), "refuse_auth")
        with pytest.raises(CmlError, match="authentication refused"):
            await client.system_stats(worker)
        assert client.calls["authenticate"] == 2  # the 401 led to one more login

    run(with_client(scenario))


def test_expired_tokens_cost_one_login_and_no_error(simulator: CmlSimulator, worker: str) -> None:
    async def scenario(client: CmlClient) -> None:
        await client.labs(worker)
        simulator.expire_tokens(key_of(worker))
        await client.labs(worker)
        assert client.calls["authenticate"] == 2

    run(with_client(scenario))


def test_one_server_answers_a_fleet_of_workers_each_counted(simulator: CmlSimulator) -> None:
    urls = [simulator.add_worker(f"fleet-{n:03d}") for n in range(150)]
    before = {key_of(url): simulator.requests[key_of(url)] for url in urls}

    async def scenario(client: CmlClient) -> list[SystemStats]:
        return await asyncio.gather(*(client.system_stats(url) for url in urls))

    try:
        stats = run(with_client(scenario))
        assert len(stats) == 150
        assert all(s.compute_count == 1 for s in stats)
        assert len({s.cpu_count for s in stats}) > 1  # each worker has its own shape
        assert all(simulator.requests[key] == before[key] + 2 for key in before)
    finally:
        for url in urls:
            simulator.remove_worker(key_of(url))


def test_the_official_virl2_client_logs_in_and_reads_labs_and_stats(
    simulator: CmlSimulator, worker: str
) -> None:
    virl2_client = pytest.importorskip("virl2_client")
    # virl2-client joins "api/v0/" to the URL, so a path prefix needs its trailing slash.
    client = virl2_client.ClientLibrary(
        worker + "/",
        "admin",
        "admin-password",
        ssl_verify=False,
        allow_http=True,
        raise_for_auth_failure=True,
    )
    cml = simulator.worker(key_of(worker))
    labs = client.all_labs(show_all=True)
    assert {lab.id for lab in labs} == set(cml.labs)
    for lab in labs:
        held = cml.labs[lab.id]
        assert (lab.title, lab.state(), lab.owner) == (held.title, held.state, "admin")
        assert len(lab.nodes()) == len(held.nodes)
        assert len(lab.links()) == len(held.nodes) - 1
    assert client.get_system_stats()["all"]["cpu"]["count"] == cml.cpu_count
    assert client.get_system_health()["valid"] is True
    with pytest.raises(virl2_client.exceptions.InitializationError, match="authenticate"):
        virl2_client.ClientLibrary(
            worker + "/",
            "admin",
            "wrong",
            ssl_verify=False,
            allow_http=True,
            raise_for_auth_failure=True,
        )
