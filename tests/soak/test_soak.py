"""The relay under churn: clients connect and drop while events flow; nothing leaks or is lost.

Short by default (`SOAK_SECONDS`, 40); the long form is `SOAK_SECONDS=300 pytest -m soak`,
or `python -m benchmarks.soak` for the figures RELIABILITY.md quotes. What is checked and
how: `churn.py` (the clients) and `benchmarks/soak.py` (the run). Each test here asserts
one property of the same run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from benchmarks.soak import markdown_row, run_soak
from tests.soak.churn import SoakPlan

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
PLAN = SoakPlan(seconds=SOAK_SECONDS)

pytestmark = [pytest.mark.e2e, pytest.mark.soak, pytest.mark.timeout(SOAK_SECONDS + 120)]


@pytest.fixture(scope="module")
def soak() -> dict[str, Any]:
    figures = run_soak(PLAN)
    summary = {k: v for k, v in figures.items() if k != "samples"}
    print(json.dumps(summary, indent=2), markdown_row(figures), sep="\n")  # shown with -rP
    return figures


def test_every_connected_client_receives_every_event_it_was_entitled_to(
    soak: dict[str, Any],
) -> None:
    assert soak["failures"] == 0, soak["failure_examples"]
    assert soak["missing"] == 0
    # Something was checked: most of the published events reached most of the clients.
    assert soak["deliveries_checked"] > soak["events_published"] * PLAN.clients / 2


def test_clients_really_churned_dropping_both_ways_and_resuming(soak: dict[str, Any]) -> None:
    # Every client dropped and came back, on average, at least at half its slowest pace.
    assert soak["connections"] > PLAN.clients * SOAK_SECONDS / PLAN.max_life / 2
    assert soak["resumed"] > soak["connections"] * PLAN.resume_share / 2
    # Resuming clients stayed away a while: the relay replayed what they missed.
    assert soak["replayed"] > soak["resumed"]
    assert 0 < soak["reset_drops"] < soak["connections"]


def test_the_relay_holds_no_subscription_once_its_clients_are_gone(soak: dict[str, Any]) -> None:
    relay = soak["relay_after"]
    assert relay["clients"] == 0
    assert relay["stats"]["connects"] == relay["stats"]["disconnects"] >= soak["connections"]
    assert relay["stats"].get("cutoffs_slow_client", 0) == 0


def test_no_file_descriptor_leaks(soak: dict[str, Any]) -> None:
    fds = soak["fds"]
    assert fds["peak"] >= fds["before_clients"] + PLAN.clients / 2, "clients were connected"
    assert fds["after_clients"] <= fds["before_clients"] + PLAN.fd_margin


def test_relay_memory_stays_flat(soak: dict[str, Any]) -> None:
    # The bound and why it is what it is: `benchmarks.soak.memory_bound`.
    assert soak["rss_slope_kib_per_min"] < soak["rss_slope_bound_kib_per_min"], soak["rss_kib"]
