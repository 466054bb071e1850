"""The CML client against scripted controllers (httpx.MockTransport) and the simulator app.

No sockets: every exchange goes through an in-process transport, so the tests are fast and
can count exactly which requests were made.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from cmlfleet.cml import (
    CircuitOpenError,
    CmlClient,
    CmlCredentials,
    CmlError,
    CmlSharedState,
    SystemStats,
)
from devstack.cmlsim import CmlSimulator

ENDPOINT = "https://10.0.1.5"
T = TypeVar("T")
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class FakeCml:
    """A scripted controller: a login that hands out numbered tokens, and routes by path."""

    def __init__(self, routes: dict[str, Callable[[httpx.Request], httpx.Response]]) -> None:
        self.routes = routes
        self.seen: Counter[str] = Counter()
        self.valid_tokens: set[str] = set()
        self.logins = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v0/")
        self.seen[path] += 1
        if path == "authenticate":
            self.logins += 1
            token = f"token-{self.logins}"
            self.valid_tokens.add(token)
            return httpx.Response(200, json=token)
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in (
            self.valid_tokens
        ):
            return httpx.Response(401, json={"code": 401, "description": "No token"})
        return self.routes[path](request)


def ok(body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body)


def client_for(handler: Handler, **options: Any) -> CmlClient:
    options = {"retries": 0, "backoff": 0.0} | options
    return CmlClient(
        lambda: CmlCredentials("admin", "secret"),
        transport=httpx.MockTransport(handler),
        **options,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STATS = {
    "all": {
        "cpu": {"count": 32, "percent": 37.5},
        "memory": {"used": 32.0, "free": 96.0, "total": 128.0},
        "disk": {"used": 500.0, "free": 500.0, "total": 1000.0},
    },
    "computes": {
        "6f3a0b6e-9f7e-4a7e-8d1c-1e5b2f0c9a11": {
            "hostname": "cml-controller",
            "is_controller": True,
            "stats": {"dominfo": {"running_nodes": 3, "total_nodes": 5, "allocated_cpus": 6}},
        },
        "0c9a6e2b-1d7f-4b2e-9a55-3f4e7d8c2b10": {
            "hostname": "cml-compute-1",
            "is_controller": False,
            "stats": {"dominfo": {"running_nodes": None, "total_nodes": 4, "allocated_cpus": 0}},
        },
    },
    "controller": {"disk": {"used": 1.0, "free": 1.0, "total": 2.0}},
}


def test_one_login_serves_every_call_to_an_endpoint() -> None:
    cml = FakeCml({"system_stats": ok(STATS), "system_health": ok({"valid": True})})

    async def scenario() -> CmlClient:
        async with client_for(cml) as client:
            for _ in range(5):
                await client.system_stats(ENDPOINT)
            await client.system_health(ENDPOINT + "/")  # the same endpoint, written otherwise
            return client

    client = run(scenario())
    assert cml.logins == 1
    assert client.calls == Counter(authenticate=1, system_stats=5, system_health=1)


def test_each_endpoint_has_its_own_token() -> None:
    cml = FakeCml({"system_stats": ok(STATS)})

    async def scenario() -> None:
        async with client_for(cml) as client:
            for endpoint in (ENDPOINT, "https://10.0.1.6", ENDPOINT, "https://10.0.1.6"):
                await client.system_stats(endpoint)

    run(scenario())
    assert cml.logins == 2


def test_clients_sharing_state_share_tokens_and_circuits_across_event_loops() -> None:
    """As in a warm Lambda: each invocation has its own loop and client, not its own login."""
    shared, clock = CmlSharedState(), FakeClock()
    cml = FakeCml({"system_stats": ok(STATS), "system_health": lambda r: httpx.Response(500)})

    async def invocation() -> None:
        async with client_for(cml, breaker_threshold=1, clock=clock) as client:
            client.share_state_with(shared)
            await client.system_stats(ENDPOINT)
            with pytest.raises(CmlError):
                await client.system_health("https://10.0.1.6")

    run(invocation())
    health_requests = cml.seen["system_health"]
    run(invocation())  # the second one meets an open circuit for 10.0.1.6
    assert cml.logins == 2  # one per endpoint, none for the second invocation
    assert cml.seen["system_health"] == health_requests


def test_a_401_leads_to_one_fresh_login_with_fresh_credentials_and_a_retry() -> None:
    cml = FakeCml({"system_stats": ok(STATS)})
    passwords = iter(["old", "rotated"])
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/authenticate"):
            sent.append(json.loads(request.content)["password"])
        return await cml(request)

    async def scenario() -> CmlClient:
        client = CmlClient(
            lambda: CmlCredentials("admin", next(passwords)),
            retries=0,
            transport=httpx.MockTransport(handler),
        )
        async with client:
            await client.system_stats(ENDPOINT)
            cml.valid_tokens.clear()  # the controller restarted
            stats = await client.system_stats(ENDPOINT)
            assert stats.cpu_percent == 37.5
            return client

    client = run(scenario())
    assert sent == ["old", "rotated"]
    assert client.calls == Counter(authenticate=2, system_stats=3)


def test_a_401_right_after_a_fresh_login_is_an_error_not_a_loop() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": 401, "description": "nope"})

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/authenticate"):
            return httpx.Response(200, json="token")
        return refuse(request)

    async def scenario() -> CmlClient:
        async with client_for(handler) as client:
            with pytest.raises(CmlError, match="HTTP 401 from system_stats after a fresh login"):
                await client.system_stats(ENDPOINT)
            return client

    assert run(scenario()).calls == Counter(authenticate=2, system_stats=2)


def test_a_refused_login_is_reported_and_not_retried() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"code": 403, "description": "Authentication failed!"})

    async def scenario() -> CmlClient:
        async with client_for(handler, retries=3) as client:
            with pytest.raises(CmlError) as caught:
                await client.labs(ENDPOINT)
            assert caught.value.reason == "authentication refused"
            assert caught.value.status == 403
            assert str(caught.value) == f"{ENDPOINT}: authentication refused"
            return client

    assert run(scenario()).calls == Counter(authenticate=1)


def test_a_5xx_is_retried_with_backoff_until_it_succeeds() -> None:
    answers = iter([500, 503])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(answers, 200)
        return httpx.Response(status, json=STATS if status == 200 else {"code": status})

    cml = FakeCml({"system_stats": flaky})

    async def scenario() -> CmlClient:
        async with client_for(cml, retries=2, backoff=0.001) as client:
            assert (await client.system_stats(ENDPOINT)).memory_percent == 25.0
            return client

    assert run(scenario()).calls["system_stats"] == 3


def test_a_5xx_that_outlasts_the_retries_is_an_http_error() -> None:
    cml = FakeCml({"system_stats": lambda request: httpx.Response(500, text="boom")})

    async def scenario() -> CmlClient:
        async with client_for(cml, retries=2) as client:
            with pytest.raises(CmlError, match=r"HTTP 500 from system_stats$") as caught:
                await client.system_stats(ENDPOINT)
            assert caught.value.status == 500
            return client

    assert run(scenario()).calls["system_stats"] == 3


def test_a_4xx_is_not_retried() -> None:
    cml = FakeCml({"system_health": lambda request: httpx.Response(404, json={"code": 404})})

    async def scenario() -> CmlClient:
        async with client_for(cml, retries=3) as client:
            with pytest.raises(CmlError, match="HTTP 404 from system_health") as caught:
                await client.system_health(ENDPOINT)
            assert caught.value.status == 404
            return client

    assert run(scenario()).calls["system_health"] == 1


def test_connection_errors_are_retried() -> None:
    failures = iter([httpx.ConnectError("Connection refused")])

    async def handler(request: httpx.Request) -> httpx.Response:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return httpx.Response(200, json={"version": "2.9.0", "ready": True})

    async def scenario() -> CmlClient:
        async with client_for(handler, retries=1) as client:
            assert (await client.system_information(ENDPOINT))["version"] == "2.9.0"
            return client

    assert run(scenario()).calls == Counter(system_information=2)


def test_an_unreachable_endpoint_says_it_cannot_connect() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    async def scenario() -> None:
        async with client_for(handler, retries=1) as client:
            with pytest.raises(CmlError, match=r"cannot connect \(\[Errno 111\] Connection"):
                await client.system_information(ENDPOINT)

    run(scenario())


def test_a_hanging_endpoint_costs_about_the_timeout_per_attempt() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    async def scenario() -> CmlClient:
        async with client_for(hang, timeout=0.05, retries=1) as client:
            started = time.monotonic()
            with pytest.raises(CmlError, match=r"timed out after 0\.05 s"):
                await client.system_information(ENDPOINT)
            # Two attempts of 0.05 s; loosely bounded, only to show the hang was not awaited.
            assert time.monotonic() - started < 2
            return client

    assert run(scenario()).calls == Counter(system_information=2)


def test_requests_queued_behind_our_own_do_not_count_against_the_timeout() -> None:
    in_flight = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json={"version": "2.9.0"})

    async def scenario() -> None:
        # Ten calls through two slots take ~0.1 s, twice the timeout; none may time out.
        async with client_for(slow, timeout=0.05, max_connections=2) as client:
            endpoints = [f"https://10.0.2.{n}" for n in range(10)]
            await asyncio.gather(*(client.system_information(e) for e in endpoints))

    run(scenario())
    assert peak == 2


def test_the_breaker_opens_after_the_threshold_and_then_makes_no_request() -> None:
    clock = FakeClock()
    cml = FakeCml({"system_stats": lambda request: httpx.Response(502)})

    async def scenario() -> None:
        async with client_for(cml, breaker_threshold=3, clock=clock) as client:
            for _ in range(3):
                with pytest.raises(CmlError, match="HTTP 502") as caught:
                    await client.system_stats(ENDPOINT)
                assert not isinstance(caught.value, CircuitOpenError)
            assert client.circuit_state(ENDPOINT) == "open"
            made = sum(cml.seen.values())
            for _ in range(5):
                with pytest.raises(CircuitOpenError, match="circuit open after 3 consecutive"):
                    await client.system_stats(ENDPOINT)
                with pytest.raises(CircuitOpenError):
                    await client.labs(ENDPOINT)
            assert sum(cml.seen.values()) == made
            assert client.circuit_state("https://10.0.1.6") == "closed"  # others unaffected

    run(scenario())


def test_after_the_cooldown_one_successful_trial_closes_the_circuit() -> None:
    clock = FakeClock()
    healthy = False

    def stats(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=STATS) if healthy else httpx.Response(500)

    cml = FakeCml({"system_stats": stats})

    async def scenario() -> None:
        nonlocal healthy
        options = {"breaker_threshold": 2, "breaker_cooldown": 60.0, "clock": clock}
        async with client_for(cml, **options) as client:
            for _ in range(2):
                with pytest.raises(CmlError):
                    await client.system_stats(ENDPOINT)
            clock.now += 59.9
            with pytest.raises(CircuitOpenError):
                await client.system_stats(ENDPOINT)
            clock.now += 0.1
            assert client.circuit_state(ENDPOINT) == "half-open"
            healthy = True
            before = cml.seen["system_stats"]
            assert (await client.system_stats(ENDPOINT)).running_nodes == 3
            assert cml.seen["system_stats"] == before + 1
            assert client.circuit_state(ENDPOINT) == "closed"

    run(scenario())


def test_a_failed_trial_opens_the_circuit_again_at_once() -> None:
    clock = FakeClock()
    cml = FakeCml({"system_stats": lambda request: httpx.Response(500)})

    async def scenario() -> None:
        async with client_for(cml, breaker_threshold=3, clock=clock) as client:
            for _ in range(3):
                with pytest.raises(CmlError):
                    await client.system_stats(ENDPOINT)
            clock.now += 60
            with pytest.raises(CmlError, match="HTTP 500"):
                await client.system_stats(ENDPOINT)  # the trial, which fails
            with pytest.raises(CircuitOpenError):
                await client.system_stats(ENDPOINT)

    run(scenario())


def test_while_the_trial_is_in_flight_other_calls_still_fail_fast() -> None:
    clock = FakeClock()
    failing = True
    trial_started, release = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if failing:
            return httpx.Response(500)
        trial_started.set()
        await release.wait()
        return httpx.Response(200, json={"version": "2.9.0"})

    async def scenario() -> None:
        nonlocal failing
        async with client_for(handler, breaker_threshold=1, clock=clock) as client:
            with pytest.raises(CmlError):
                await client.system_information(ENDPOINT)
            clock.now += 60
            failing = False
            trial = asyncio.create_task(client.system_information(ENDPOINT))
            await trial_started.wait()
            with pytest.raises(CircuitOpenError):
                await client.system_information(ENDPOINT)
            release.set()
            assert (await trial)["version"] == "2.9.0"
            assert client.circuit_state(ENDPOINT) == "closed"
            assert client.calls["system_information"] == 2

    run(scenario())


def test_answers_in_4xx_do_not_trip_the_breaker() -> None:
    cml = FakeCml({"system_health": lambda request: httpx.Response(404)})

    async def scenario() -> None:
        async with client_for(cml, breaker_threshold=2) as client:
            for _ in range(4):
                with pytest.raises(CmlError, match="HTTP 404"):
                    await client.system_health(ENDPOINT)
            assert client.circuit_state(ENDPOINT) == "closed"

    run(scenario())


def test_stats_are_percentages_of_the_totals_and_nodes_summed_over_computes() -> None:
    cml = FakeCml({"system_stats": ok(STATS)})

    async def scenario() -> SystemStats:
        async with client_for(cml) as client:
            return await client.system_stats(ENDPOINT)

    assert run(scenario()) == SystemStats(
        cpu_percent=37.5,
        memory_percent=25.0,
        disk_percent=50.0,
        running_nodes=3,
        total_nodes=9,
        cpu_count=32,
        compute_count=2,
    )


def test_stats_without_totals_are_unknown_not_zero() -> None:
    cml = FakeCml(
        {"system_stats": ok({"all": {"cpu": {}, "memory": {"total": 0}}, "computes": {}})}
    )

    async def scenario() -> SystemStats:
        async with client_for(cml) as client:
            return await client.system_stats(ENDPOINT)

    stats = run(scenario())
    assert (stats.cpu_percent, stats.memory_percent, stats.disk_percent) == (None, None, None)
    assert (stats.running_nodes, stats.total_nodes, stats.compute_count) == (0, 0, 0)


def test_a_malformed_answer_is_a_clear_error() -> None:
    cml = FakeCml({"system_stats": ok(["not", "stats"]), "labs": ok({"not": "ids"})})

    async def scenario() -> None:
        async with client_for(cml) as client:
            with pytest.raises(CmlError, match="unexpected system_stats response"):
                await client.system_stats(ENDPOINT)
            with pytest.raises(CmlError, match="unexpected labs response"):
                await client.labs(ENDPOINT)

    run(scenario())


LAB = {
    "id": "90f84e38-a71c-4d57-8d90-00fa8a197385",
    "created": "2025-02-28T07:33:47+00:00",
    "modified": "2025-03-01T10:00:00+00:00",
    "lab_description": "",
    "lab_notes": "",
    "lab_title": "OSPF multi-area",
    "owner": "5b1e4f0a-0d3c-4c52-9d7e-2f6a8b9c0d1e",
    "owner_username": "alice",
    "state": "STARTED",
    "node_count": 4,
    "link_count": 3,
    "effective_permissions": ["lab_admin"],
}


def test_labs_are_listed_then_read_one_by_one_and_a_vanished_lab_is_skipped() -> None:
    gone = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
    stopped = LAB | {"id": "2e2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "state": "STOPPED"}
    stopped |= {"lab_description": "CCNA study", "owner_username": None}
    listing: list[httpx.Request] = []

    def labs(request: httpx.Request) -> httpx.Response:
        listing.append(request)
        return httpx.Response(200, json=[LAB["id"], gone, stopped["id"]])

    cml = FakeCml(
        {
            "labs": labs,
            f"labs/{LAB['id']}": ok(LAB),
            f"labs/{gone}": lambda request: httpx.Response(404, json={"code": 404}),
            f"labs/{stopped['id']}": ok(stopped),
        }
    )

    async def scenario() -> CmlClient:
        async with client_for(cml) as client:
            found = await client.labs(ENDPOINT)
            assert [(lab.lab_id, lab.state) for lab in found] == [
                (LAB["id"], "STARTED"),
                (stopped["id"], "STOPPED"),
            ]
            first, second = found
            assert (first.title, first.node_count, first.owner) == ("OSPF multi-area", 4, "alice")
            assert first.description is None  # CML's empty description
            assert first.modified_at == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
            # Without a username the owner's id is the best there is.
            assert (second.owner, second.description) == (stopped["owner"], "CCNA study")
            return client

    client = run(scenario())
    assert listing[0].url.params["show_all"] == "true"
    assert client.calls == Counter(authenticate=1, labs=1, lab=3)


def test_lab_details_are_read_a_few_at_a_time() -> None:
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(10)]
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        path = request.url.path.removeprefix("/api/v0/")
        if path == "authenticate":
            return httpx.Response(200, json="token")
        if path == "labs":
            return httpx.Response(200, json=ids)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return httpx.Response(200, json=LAB | {"id": path.removeprefix("labs/")})

    async def scenario() -> int:
        async with client_for(handler, lab_concurrency=3) as client:
            return len(await client.labs(ENDPOINT))

    assert run(scenario()) == 10
    assert 1 < peak <= 3


def test_a_failing_lab_read_fails_the_listing_and_stops_the_other_reads() -> None:
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(20)]

    def lab(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(ids[0]):
            return httpx.Response(500)
        return httpx.Response(200, json=LAB)

    cml = FakeCml({"labs": ok(ids)} | {f"labs/{i}": lab for i in ids})

    async def scenario() -> CmlClient:
        async with client_for(cml, lab_concurrency=1) as client:
            with pytest.raises(CmlError, match="HTTP 500 from lab"):
                await client.labs(ENDPOINT)
            return client

    assert run(scenario()).calls["lab"] == 1


def test_an_endpoint_must_be_an_http_url() -> None:
    async def scenario() -> None:
        async with client_for(FakeCml({})) as client:
            with pytest.raises(CmlError, match="not an http"):
                await client.system_information("10.0.1.5")

    run(scenario())


def test_the_password_never_shows_in_a_repr() -> None:
    assert "hunter2" not in repr(CmlCredentials("admin", "hunter2"))


def test_the_client_reads_what_the_simulator_holds() -> None:
    simulator = CmlSimulator()
    endpoint = simulator.add_worker("w-1", seed=42)
    cml = simulator.worker("w-1")

    async def scenario() -> tuple[SystemStats, list[str], dict[str, Any]]:
        transport = httpx.ASGITransport(app=simulator.app)
        async with CmlClient(
            lambda: CmlCredentials("admin", "admin-password"), transport=transport
        ) as client:
            stats = await client.system_stats(endpoint)
            labs = await client.labs(endpoint)
            return (
                stats,
                sorted(lab.lab_id for lab in labs),
                await client.system_information(endpoint),
            )

    stats, lab_ids, information = run(scenario())
    assert information["version"] == "2.9.0"
    assert lab_ids == sorted(cml.labs)
    assert stats.running_nodes == len(cml.running_nodes())
    assert stats.cpu_percent == round(cml.cpu_percent(), 2)
    assert stats.compute_count == 1
    assert simulator.requests["w-1"] == 1 + 1 + 1 + len(lab_ids) + 1
