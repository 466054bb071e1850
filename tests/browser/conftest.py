"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the
whole local stack (moto, the template's stack, handlers, EC2 and CML simulators, the relay
serving the dashboard, the local origin)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from devstack.ec2sim import Delays
from devstack.fleetstack import FleetStack
from tests.localfleet import running_fleet

# What this machine needs to run Chromium headless as root, offline (see the library's
# notes: without the networking flags it keeps trying to reach Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            f"no Chromium at {path}: `make test` installs Debian's chromium "
            "(or set CHROMIUM to a Chromium binary)"
        )
    return path


# Module scope, not session: Playwright's sync API runs an event loop in this thread
# while it is open, and later tests call asyncio.run() (the Lambda handlers do).
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetStack]:
    """The local stack with the demo fleet; schedules off, so only the tests move metrics."""
    with running_fleet(
        demo_workers=3, ec2_delays=Delays(boot=1.0, stop=1.0, terminate=1.0), run_schedules=False
    ) as stack:
        yield stack


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile per test: nothing stored from another user's session."""
    context = browser.new_context(viewport={"width": 1600, "height": 720})
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.uncaught = errors  # type: ignore[attr-defined]
    return page
