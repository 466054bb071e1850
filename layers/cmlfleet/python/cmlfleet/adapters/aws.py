"""boto3 clients, made lazily and cached per process.

Nothing connects at import time: tests start moto first, the local stack sets
`AWS_ENDPOINT_URL`, and Lambda reuses clients across warm invocations.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=3,
    read_timeout=10,
)


@cache
def client(service: str, read_timeout: float | None = None) -> Any:
    """A shared boto3 client for `service` with short timeouts and standard retries.

    A long poll (SQS `WaitTimeSeconds`) needs a `read_timeout` longer than its wait.
    """
    config = _CONFIG if read_timeout is None else _CONFIG.merge(Config(read_timeout=read_timeout))
    return boto3.session.Session().client(service, config=config)


def reset_clients() -> None:
    """Forget cached clients (tests call this when they switch AWS endpoints)."""
    client.cache_clear()
