"""The relay's start: setting up the bus is retried with backoff, within a time budget."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from relay.app import Relay
from relay.backoff import AbandonedError, Backoff
from relay.settings import RelaySettings

QUICK = {"first_seconds": 0.01, "cap_seconds": 0.04}


class FlakyBus:
    """A bus whose first `failures` opens fail (None: every one), as SNS or SQS may."""

    def __init__(self, failures: int | None) -> None:
        self.failures = failures
        self.opens = 0
        self.retried = threading.Event()  # a second open was tried
        self.started = False
        self.closed = False

    def open(self) -> None:
        self.opens += 1
        if self.opens == 2:
            self.retried.set()
        if self.failures is None or self.opens <= self.failures:
            raise ClientError(
                {"Error": {"Code": "AuthorizationError", "Message": "not yet"}}, "Subscribe"
            )

    def start(self, sink: Any) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def seconds_since_receive(self) -> float | None:
        return 0.0 if self.started else None


def relay_with(bus: FlakyBus, budget: float) -> Relay:
    settings = RelaySettings(
        topic_arn="arn:aws:sns:us-east-1:123456789012:events",
        relay_anonymous_role="admin",
        relay_metrics_port=0,
    )
    return Relay(settings, bus, bus_backoff=Backoff(budget, **QUICK))


def test_a_bus_that_fails_three_times_opens_at_the_fourth_and_each_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = FlakyBus(failures=3)
    relay = relay_with(bus, budget=30)
    with caplog.at_level(logging.WARNING):
        asyncio.run(relay.start())
    assert (bus.opens, bus.started, bus.closed) == (4, True, False)
    retries = [
        r for r in caplog.records if r.getMessage() == "opening the relay queue failed; retrying"
    ]
    assert [r.__dict__["attempt"] for r in retries] == [1, 2, 3]
    assert "AuthorizationError" in retries[0].__dict__["error"]


def test_a_bus_that_never_opens_fails_the_start_after_the_budget_and_is_cleaned_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = FlakyBus(failures=None)
    relay = relay_with(bus, budget=0.5)
    started = time.monotonic()
    with pytest.raises(ClientError, match="not yet"):
        asyncio.run(relay.start())
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    assert bus.opens >= 5  # retried all along the budget, not once
    assert bus.closed, "what a failed attempt created is removed"
    assert not bus.started
    assert any(
        r.getMessage() == "opening the relay queue failed; giving up" for r in caplog.records
    )


def test_a_zero_budget_means_one_attempt() -> None:
    bus = FlakyBus(failures=None)
    with pytest.raises(ClientError):
        asyncio.run(relay_with(bus, budget=0).start())
    assert bus.opens == 1


def test_a_shutdown_while_retrying_ends_the_start_at_once() -> None:
    bus = FlakyBus(failures=None)
    relay = relay_with(bus, budget=60)

    async def start_then_stop() -> float:
        start = asyncio.create_task(relay.start())
        assert await asyncio.to_thread(bus.retried.wait, 5)
        relay.begin_shutdown()  # SIGTERM while ECS waits for the task to come up
        asked = time.monotonic()
        with pytest.raises(AbandonedError):
            await asyncio.wait_for(start, 5)
        return time.monotonic() - asked

    assert asyncio.run(start_then_stop()) < 1
    assert bus.closed


def test_backoff_doubles_from_the_first_delay_up_to_the_cap_with_jitter_in_the_top_half() -> None:
    backoff = Backoff(budget_seconds=120, first_seconds=0.5, cap_seconds=4)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (30, 4.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 1, "jittered"
