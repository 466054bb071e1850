"""Retrying a start-up step: capped exponential backoff with jitter, within a time budget.

A relay that dies at its first SNS or SQS error (IAM still propagating to a new role,
throttling) makes ECS start another, and three quick failures trip the deployment's
circuit breaker; waiting a little and trying again is nearly always enough.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aws_lambda_powertools import Logger

logger = Logger(child=True)

T = TypeVar("T")


class AbandonedError(RuntimeError):
    """Raised instead of another attempt once the caller no longer wants the result."""


@dataclass(frozen=True)
class Backoff:
    """Delays that double from `first_seconds` up to `cap_seconds`, over `budget_seconds`."""

    budget_seconds: float
    first_seconds: float = 0.5
    cap_seconds: float = 15.0

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based): half fixed, half random.

        The random half keeps the tasks of one deployment from retrying in step; the fixed
        half keeps any one task from retrying at once.
        """
        ceiling = min(self.cap_seconds, self.first_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


async def retry(
    action: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str,
    abandon: asyncio.Event,
) -> T:
    """`action()`'s result, trying again after each failure until the budget is spent.

    Each failure is logged. The last attempt starts at the latest when the budget ends;
    its error is raised. `abandon` being set ends the waiting with `AbandonedError`.
    """
    deadline = time.monotonic() + backoff.budget_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return await action()
        except Exception as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.error(f"{what} failed; giving up", attempts=attempt, error=_describe(error))
                raise
            wait = min(backoff.delay(attempt), remaining)
            logger.warning(
                f"{what} failed; retrying",
                attempt=attempt,
                retry_in_seconds=round(wait, 3),
                error=_describe(error),
            )
            if await _set_within(abandon, wait):
                raise AbandonedError(f"{what} abandoned after {attempt} attempts") from error


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
