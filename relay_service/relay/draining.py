"""Draining on ECS: the shutdown sequence starts when ECS decides to stop the task.

ECS deregisters a stopping task from the load balancer and waits out the deregistration
delay before it sends SIGTERM. A relay that waited for the signal would say goodbye
(`system.sse.shutdown`, with its spread-out reconnect delay) only after the balancer had
already cut its streams, and every client would reconnect at once. The task metadata
endpoint (`ECS_CONTAINER_METADATA_URI_V4`, set by Fargate) shows `DesiredStatus: STOPPED`
as soon as ECS has decided, so the relay polls it and begins the shutdown itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(child=True)

STOPPING_STATUS = "STOPPED"
# A metadata endpoint that stays away is worth a line now and then, not one per poll.
FAILURE_LOG_INTERVAL_SECONDS = 300.0


class EcsTaskWatch:
    """Polls this task's metadata and calls `on_stopping` once ECS wants the task stopped."""

    def __init__(
        self,
        metadata_uri: str,
        on_stopping: Callable[[], None],
        *,
        poll_seconds: float = 2.0,
        timeout_seconds: float = 2.0,
    ) -> None:
        if not metadata_uri.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {metadata_uri!r}")
        self._url = metadata_uri.rstrip("/") + "/task"
        self._on_stopping = on_stopping
        self._poll_seconds = poll_seconds
        self._timeout = timeout_seconds
        self.failures = 0
        self._last_logged: float | None = None

    async def run(self) -> None:
        """Poll until ECS says stop, then call `on_stopping` and return (cancel to end early)."""
        while True:
            # urllib blocks: the event loop keeps serving the streams meanwhile.
            task = await asyncio.to_thread(self._read_task)
            if task is not None and task.get("DesiredStatus") == STOPPING_STATUS:
                logger.info(
                    "ECS is stopping this task; draining",
                    known_status=task.get("KnownStatus"),
                    task_arn=task.get("TaskARN"),
                )
                self._on_stopping()
                return
            await asyncio.sleep(self._poll_seconds)

    def _read_task(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout) as response:  # noqa: S310 - http(s) checked above
                body = json.load(response)
        except Exception as error:  # whatever goes wrong here, the relay goes on serving
            self._failed(error)
            return None
        if not isinstance(body, dict):
            self._failed(ValueError("task metadata is not a JSON object"))
            return None
        return body

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if self._last_logged is not None and now - self._last_logged < FAILURE_LOG_INTERVAL_SECONDS:
            return
        self._last_logged = now
        logger.warning(
            "ECS task metadata unavailable; until it answers, draining starts at SIGTERM",
            failures=self.failures,
            error=f"{type(error).__name__}: {error}",
        )
