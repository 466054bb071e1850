"""Hypothesis budgets: a quick default for `make test`, `HYPOTHESIS_PROFILE=long` for more.

Imported by every property-based test module, so the profile is loaded before any of
them runs. Fuzzing that goes through moto costs far more per example than pure
properties, so those tests take a fraction of the budget (`scaled`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def _register(name: str, max_examples: int, *, derandomize: bool = False) -> None:
    settings.register_profile(
        name,
        max_examples=max_examples,
        derandomize=derandomize,
        deadline=None,  # moto and the first call of a code path are slow, and not a bug
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,  # a failure prints how to replay it with @reproduce_failure
        database=None,  # no .hypothesis/ folder left in the work tree
    )


# CI runs the same examples every time (a submission must not land or fail by chance);
# a developer's runs explore new ones, and the long profile explores far more.
_register("quick", 150, derandomize=bool(os.environ.get("CI")))
_register("long", 3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


def scaled(fraction: float, minimum: int = 10) -> int:
    """A share of the profile's `max_examples`, for tests whose examples are expensive."""
    budget: int = settings().max_examples
    return max(minimum, int(budget * fraction))
