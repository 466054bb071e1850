"""The EC2 side of the simulated fleet: lifecycle delays and state-change notifications.

moto changes an instance's state at once and tells nobody. This simulator watches moto's
instances and, for every change it sees, plays what EC2 would have done: the transitional
state first (`pending`, `stopping`, `shutting-down`), the final one after a realistic
delay, each as a real-shaped `EC2 Instance State-change Notification` on EventBridge.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devstack.ec2events import put_state_change

log = logging.getLogger("devstack.ec2sim")


@dataclass(frozen=True)
class Delays:
    """Seconds EC2 takes for each transition (real ones take 30 s to a few minutes)."""

    boot: float = 6.0
    stop: float = 5.0
    terminate: float = 4.0

    def scaled(self, factor: float) -> Delays:
        return Delays(self.boot * factor, self.stop * factor, self.terminate * factor)


DEFAULT_DELAYS = Delays()

# moto's (instant) state → what EC2 reports now, and what it reports after the delay.
TRANSITIONS = {
    "running": ("pending", "running", "boot"),
    "stopped": ("stopping", "stopped", "stop"),
    "terminated": ("shutting-down", "terminated", "terminate"),
}


class Ec2Simulator(threading.Thread):
    def __init__(
        self,
        ec2: Any,
        events: Any,
        *,
        region: str,
        account: str,
        delays: Delays = DEFAULT_DELAYS,
        poll_interval: float = 0.25,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(name="ec2-simulator", daemon=True)
        self._ec2, self._events = ec2, events
        self._region, self._account = region, account
        self._delays, self._poll = delays, poll_interval
        self._known: dict[str, str] = {}
        self._due: list[tuple[float, int, str, str, int]] = []
        self._generation: dict[str, int] = {}
        self._order = itertools.count()
        self._stopping = threading.Event()
        self._on_change = on_change  # (instance id, moto state): e.g. give it a CML host

    def adopt_existing(self) -> None:
        """Take the instances that exist now as settled (no events for them)."""
        self._known.update(self._moto_states())

    def known_instances(self) -> dict[str, str]:
        return dict(self._known)

    def run(self) -> None:
        while not self._stopping.wait(self._poll):
            try:
                self._observe()
                self._emit_due()
            except Exception:
                log.exception("EC2 simulation step failed; continuing")

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def _moto_states(self) -> dict[str, str]:
        states: dict[str, str] = {}
        paginator = self._ec2.get_paginator("describe_instances")
        for page in paginator.paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    states[instance["InstanceId"]] = instance["State"]["Name"]
        return states

    def _observe(self) -> None:
        for instance_id, state in self._moto_states().items():
            if self._known.get(instance_id) == state:
                continue
            self._known[instance_id] = state
            if self._on_change is not None:
                self._on_change(instance_id, state)
            if state not in TRANSITIONS:
                continue
            now_state, final_state, delay_name = TRANSITIONS[state]
            # A newer change supersedes what was still to come for this instance.
            generation = self._generation.get(instance_id, 0) + 1
            self._generation[instance_id] = generation
            self._put(instance_id, now_state)
            due = time.monotonic() + getattr(self._delays, delay_name)
            heapq.heappush(
                self._due, (due, next(self._order), instance_id, final_state, generation)
            )

    def _emit_due(self) -> None:
        while self._due and self._due[0][0] <= time.monotonic():
            _, _, instance_id, state, generation = heapq.heappop(self._due)
            if self._generation.get(instance_id) == generation:
                self._put(instance_id, state)

    def _put(self, instance_id: str, state: str) -> None:
        log.info("EC2 %s -> %s", instance_id, state)
        put_state_change(
            self._events, instance_id, state, region=self._region, account=self._account
        )
