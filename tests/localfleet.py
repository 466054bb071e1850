"""The whole local system for end-to-end tests, and waiting on it without sleeping blind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from cmlfleet import bootstrap
from devstack.fleet import seed_demo_fleet
from devstack.fleetstack import FleetStack
from devstack.stack import LocalStack

T = TypeVar("T")
QUIET = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


@contextmanager
def running_fleet(demo_workers: int | None = None, **options: Any) -> Iterator[FleetStack]:
    """A started `FleetStack` (with `demo_workers` of the demo fleet, if given); the process
    environment and the cached adapters are given back as they were afterwards."""
    saved = dict(os.environ)
    bootstrap.reset()
    options["overrides"] = QUIET | options.get("overrides", {})
    stack = FleetStack(**options)

    def seed(local: LocalStack) -> None:
        if demo_workers:
            seed_demo_fleet(local.client("ec2"), local.region, demo_workers)

    try:
        yield stack.start(before_simulation=seed)
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
        bootstrap.reset()


def eventually(probe: Callable[[], T], check: Callable[[T], bool], timeout: float = 30) -> T:
    """Poll `probe` until `check` accepts its value; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last value: {value!r}")
        time.sleep(0.1)
