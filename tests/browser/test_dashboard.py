"""The dashboard as its users meet it: signed in through the role picker, live over the
stream, in headless Chromium, against the whole local stack."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from devstack.fleetstack import FleetStack
from tests.localfleet import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ROWS = "#workers tbody tr"


def run_in_thread(work: Callable[[], Any]) -> Any:
    """Handlers run asyncio; Playwright's sync API keeps an event loop in this thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result(timeout=60)


def bearer(fleet: FleetStack, user: str, role: str) -> dict[str, str]:
    assert fleet.issuer is not None
    return {"Authorization": f"Bearer {fleet.issuer.token(user, role)}"}


def api(fleet: FleetStack, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method, fleet.url + path, headers=bearer(fleet, "ada", "admin"), timeout=30, **kwargs
    )
    assert response.is_success, response.text
    return response.json()


def api_workers(fleet: FleetStack) -> dict[str, Any]:
    return {w["worker_id"]: w for w in api(fleet, "GET", "/api/workers")["workers"]}


def worker_named(fleet: FleetStack, name: str) -> dict[str, Any]:
    return next(w for w in api_workers(fleet).values() if w["name"] == name)


def ensure_running(fleet: FleetStack, name: str) -> dict[str, Any]:
    """The worker named so, started first if a test before left it stopped."""
    worker = worker_named(fleet, name)
    if worker["status"] != "running":
        api(fleet, "POST", f"/api/workers/{worker['worker_id']}/start")
        eventually(lambda: api_workers(fleet)[worker["worker_id"]]["status"], "running".__eq__)
    return worker_named(fleet, name)


def sign_in(page: Page, fleet: FleetStack, user: str, query: str = "") -> None:
    """Through the development role picker, as a person would."""
    page.goto(f"{fleet.url}/{query}")
    page.locator(f'#dev-users button[data-username="{user}"]').click()
    expect(page.locator("#who")).to_contain_text(user)
    expect(page.locator(ROWS).first).to_be_visible()


def page_rows(page: Page) -> dict[str, tuple[str, int]]:
    """Each row's worker id → (status, version), as the page shows it."""
    rows = page.eval_on_selector_all(
        ROWS, "rows => rows.map(r => [r.dataset.workerId, r.dataset.status, r.dataset.version])"
    )
    return {worker_id: (status, int(version)) for worker_id, status, version in rows}


def api_rows(fleet: FleetStack) -> dict[str, tuple[str, int]]:
    return {i: (w["status"], w["version"]) for i, w in api_workers(fleet).items()}


def row(page: Page, worker_id: str) -> Any:
    return page.locator(f'{ROWS}[data-worker-id="{worker_id}"]')


def badge_is(page: Page, status: str, timeout: float = 30_000) -> None:
    badge = page.locator("#realtime-badge")
    expect(badge).to_have_attribute("data-status", status, timeout=timeout)
    expect(badge).to_have_text(f"Realtime: {status}")


def test_screenshot_of_the_dashboard(page: Page, fleet: FleetStack) -> None:
    """The README's picture (first, on the demo fleet as `make run` shows it, with metrics
    and labs collected); `make screenshot` writes it to docs/, other runs to build/."""
    assert fleet.stack is not None
    functions = fleet.stack.functions
    run_in_thread(fleet._feed_cloudwatch)
    run_in_thread(lambda: functions["MetricsCollectorFunction"].invoke({}))
    run_in_thread(lambda: functions["LabsRefreshFunction"].invoke({}))
    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    target = worker_named(fleet, "cml-lab-a")
    assert target["labs_count"] > 0
    row(page, target["worker_id"]).click()
    labs = page.locator("#details .labs-table tbody tr")
    expect(labs).to_have_count(target["labs_count"])
    out = ROOT / os.environ.get("SCREENSHOT_DIR", "build") / "dashboard.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1600, 720)


def test_an_admin_sees_the_fleet_live_with_every_command(page: Page, fleet: FleetStack) -> None:
    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    assert set(page_rows(page)) == set(api_workers(fleet))
    expect(page.locator("#create-worker")).to_be_visible()
    expect(page.locator("#actions-head")).to_be_visible()
    running = worker_named(fleet, "cml-lab-a")
    expect(row(page, running["worker_id"]).locator('button[data-command="stop"]')).to_be_visible()
    assert page.uncaught == []  # type: ignore[attr-defined]


def test_a_worker_created_through_the_api_appears_and_reaches_running_without_a_reload(
    page: Page, fleet: FleetStack
) -> None:
    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    page.evaluate("window.__sameDocument = true")
    created = api(fleet, "POST", "/api/workers", json={"name": "browser-created"})
    new_row = row(page, created["worker_id"])
    expect(new_row.locator('td[data-col="name"]')).to_have_text("browser-created")
    expect(new_row).to_have_attribute("data-status", "running")
    expect(new_row.locator('td[data-col="status"]')).to_contain_text("running")
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    # The row sits in name order among the others, and the stream told the page about it.
    names = page.locator(f'{ROWS} td[data-col="name"]').all_text_contents()
    assert names == sorted(names)
    created_toasts = page.locator(".toast").filter(has_text="Worker created")
    expect(created_toasts.filter(has_text="browser-created")).to_have_count(1)


def test_a_metrics_change_moves_its_bar(page: Page, fleet: FleetStack) -> None:
    assert fleet.cml is not None
    assert fleet.stack is not None
    collector = fleet.stack.functions["MetricsCollectorFunction"]
    target = ensure_running(fleet, "cml-lab-b")
    host = fleet.cml.worker(target["instance_id"])

    def collect() -> float:
        run_in_thread(fleet._feed_cloudwatch)
        run_in_thread(lambda: collector.invoke({}))
        return float(api_workers(fleet)[target["worker_id"]]["cpu_utilization"])

    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    bar = row(page, target["worker_id"]).locator('td[data-col="cpu_utilization"] .bar')
    first = collect()
    expect(bar).to_have_attribute("data-value", _js_number(first))
    # Move the simulated CPU far enough that the collector reports it (threshold 5 points).
    host.idle_cpu += 45 if host.cpu_percent() < 50 else -45
    second = collect()
    assert abs(second - first) >= 5
    expect(bar).to_have_attribute("data-value", _js_number(second))
    fill_width = bar.locator(".bar-fill").evaluate("e => parseFloat(e.style.width)")
    assert fill_width == pytest.approx(second, abs=0.1)
    sparkline = row(page, target["worker_id"]).locator('td[data-col="cpu_utilization"] polyline')
    assert len(sparkline.get_attribute("points").split()) >= 2


def test_a_relay_restart_turns_the_badge_amber_then_green_and_loses_no_event(
    page: Page, fleet: FleetStack
) -> None:
    assert fleet.relay is not None
    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    target = ensure_running(fleet, "cml-training")
    # Give the page a cursor: it has seen at least one event before the relay goes.
    api(fleet, "POST", f"/api/workers/{target['worker_id']}/stop")
    eventually(lambda: page_rows(page), lambda rows: rows == api_rows(fleet))
    expect(row(page, target["worker_id"])).to_have_attribute("data-status", "stopped")
    snapshots = page.evaluate("cmlfleet.snapshots")

    fleet.relay.stop()  # SIGTERM: the relay tells its clients to come back later
    badge_is(page, "reconnecting")
    # The fleet moves on while no relay is up.
    api(fleet, "POST", f"/api/workers/{target['worker_id']}/start")
    eventually(lambda: api_workers(fleet)[target["worker_id"]]["status"], "running".__eq__)
    expect(row(page, target["worker_id"])).to_have_attribute("data-status", "stopped")
    badge_is(page, "reconnecting")  # still amber: the page keeps its last known data

    fleet.relay.start()
    badge_is(page, "connected", timeout=60_000)
    eventually(lambda: page_rows(page), lambda rows: rows == api_rows(fleet))
    expect(row(page, target["worker_id"])).to_have_attribute("data-status", "running")
    # Caught up by replaying what it missed after its last event id, not by reloading.
    assert page.evaluate("cmlfleet.snapshots") == snapshots
    assert page.uncaught == []  # type: ignore[attr-defined]


def test_with_the_stream_unavailable_the_page_shows_the_fleet_and_connects_later(
    page: Page, fleet: FleetStack
) -> None:
    # Every stream request fails (a relay draining, a proxy in the way): the rest works.
    page.route("**/api/events/stream*", lambda route: route.abort())
    sign_in(page, fleet, "max")
    assert set(page_rows(page)) == set(api_workers(fleet))  # loaded by REST meanwhile
    badge_is(page, "reconnecting")
    page.unroute("**/api/events/stream*")
    badge_is(page, "connected", timeout=60_000)  # the next retry of its backoff succeeds


def test_a_user_sees_only_their_workers_and_no_admin_buttons(page: Page, fleet: FleetStack) -> None:
    ensure_running(fleet, "cml-lab-b")  # bob's
    ensure_running(fleet, "cml-lab-a")  # alice's
    sign_in(page, fleet, "alice")
    badge_is(page, "connected")
    workers = api_workers(fleet)
    mine = {i for i, w in workers.items() if w["owner"] == "alice"}
    assert mine
    assert mine != set(workers)
    assert set(page_rows(page)) == mine
    expect(page.locator("#create-worker")).to_be_hidden()
    expect(page.locator("#actions-head")).to_be_hidden()
    expect(page.locator("[data-command]")).to_have_count(0)
    # Another owner's worker changes: the page hears only about alice's.
    bobs = next(w for w in workers.values() if w["owner"] == "bob" and w["status"] == "running")
    api(fleet, "POST", f"/api/workers/{bobs['worker_id']}/stop")
    eventually(lambda: api_workers(fleet)[bobs["worker_id"]]["status"], "stopped".__eq__)
    hers = next(i for i in mine if workers[i]["status"] == "running")
    api(fleet, "POST", f"/api/workers/{hers}/stop")
    expect(row(page, hers)).to_have_attribute("data-status", "stopped")
    assert set(page_rows(page)) == mine
    # The details panel: her worker's fields, without AWS internals and without commands.
    row(page, hers).click()
    details = page.locator("#details")
    expect(details.locator('[data-field="owner"]')).to_have_text("alice")
    expect(details.locator('[data-field="instance_id"]')).to_have_text("—")
    expect(details.locator("button[data-command]")).to_have_count(0)


def test_a_worker_name_containing_html_shows_as_text(page: Page, fleet: FleetStack) -> None:
    name = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    sign_in(page, fleet, "ada")
    badge_is(page, "connected")
    created = api(fleet, "POST", "/api/workers", json={"name": name})
    name_cell = row(page, created["worker_id"]).locator('td[data-col="name"]')
    expect(name_cell).to_have_text(name)
    toast = page.locator(".toast").filter(has_text="Worker created").filter(has_text=name)
    expect(toast).to_be_visible()
    row(page, created["worker_id"]).click()
    expect(page.locator("#details-title")).to_have_text(name)
    assert page.locator("#workers img, #workers b, .toast img, #details img").count() == 0
    assert page.evaluate("window.__xss") is None
    # The page also refuses inline script outright (Content-Security-Policy).
    csp = httpx.get(fleet.url + "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_with_real_time_off_the_page_loads_by_rest_and_refreshes_on_demand(
    page: Page, fleet: FleetStack
) -> None:
    sign_in(page, fleet, "max", query="?realtime=off")
    expect(page.locator("#realtime-badge")).to_have_text("Realtime: off")
    assert page.evaluate("cmlfleet.client") is None  # no stream was opened
    assert set(page_rows(page)) == set(api_workers(fleet))
    created = api(fleet, "POST", "/api/workers", json={"name": "browser-quiet"})
    page.locator("#refresh").click()
    expect(row(page, created["worker_id"])).to_be_visible()
    # Switching it on (a stored preference) connects the stream.
    page.locator("#realtime-toggle").check()
    badge_is(page, "connected")
    assert page.evaluate("localStorage.getItem('cmlfleet.realtime')") == "on"


def _js_number(value: float) -> str:
    """How the page writes a number into an attribute (JavaScript's String(number))."""
    return str(int(value)) if value == int(value) else repr(value)
