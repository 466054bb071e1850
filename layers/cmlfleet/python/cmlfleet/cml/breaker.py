"""A circuit breaker per CML endpoint, so one dead worker costs one fast error per poll.

Closed: calls go through; `threshold` consecutive failures open it. Open: calls fail at
once until `cooldown` has passed. Half-open: one trial call goes through (the others
still fail fast); its success closes the circuit, its failure opens it for another
cooldown. The clock is injected so tests need not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cmlfleet.cml.errors import CircuitOpenError


@dataclass
class Circuit:
    """One endpoint's record: consecutive failures, and since when it has been open."""

    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False


class CircuitBreaker:
    """Tracks consecutive failures per endpoint; `admit` refuses calls to an open one."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        circuits: dict[str, Circuit] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("breaker_threshold must be at least 1")
        self._threshold, self._cooldown, self._clock = threshold, cooldown, clock
        # Passed in when the records must outlive this breaker (see `CmlSharedState`).
        self._circuits = circuits if circuits is not None else {}

    def state(self, endpoint: str) -> str:
        """The endpoint's circuit: "closed", "open" or "half-open" (a trial may go through)."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        if circuit.trial_in_flight or self._clock() - circuit.opened_at >= self._cooldown:
            return "half-open"
        return "open"

    def admit(self, endpoint: str) -> bool:
        """Let a call through (True if it is the half-open trial), or raise `CircuitOpenError`."""
        circuit = self._circuits.setdefault(endpoint, Circuit())
        if circuit.opened_at is None:
            return False
        waited = self._clock() - circuit.opened_at
        if circuit.trial_in_flight or waited < self._cooldown:
            retry_in = max(0.0, self._cooldown - waited)
            raise CircuitOpenError(
                endpoint,
                f"circuit open after {circuit.failures} consecutive failures"
                f" (next try in {retry_in:.1f} s)",
            )
        circuit.trial_in_flight = True
        return True

    def succeeded(self, endpoint: str) -> None:
        self._circuits[endpoint] = Circuit()

    def failed(self, endpoint: str) -> None:
        circuit = self._circuits.setdefault(endpoint, Circuit())
        circuit.failures += 1
        # A failed trial re-opens at once: one more failure is all the evidence needed.
        if circuit.trial_in_flight or circuit.failures >= self._threshold:
            circuit.opened_at = self._clock()
        circuit.trial_in_flight = False

    def abandoned(self, endpoint: str) -> None:
        """The trial ended without a verdict (cancelled): free its slot, judge nothing."""
        circuit = self._circuits.get(endpoint)
        if circuit is not None:
            circuit.trial_in_flight = False

    def forget(self, endpoint: str) -> None:
        self._circuits.pop(endpoint, None)
