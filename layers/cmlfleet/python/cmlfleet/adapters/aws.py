"""boto3 clients, made lazily and cached per process.

Nothing connects at import time: tests start moto first, the local stack sets
`AWS_ENDPOINT_URL`, and Lambda reuses clients across warm invocations.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=3,
    read_timeout=10,
)
ClientHook = Callable[[Any], None]
_client_hooks: list[ClientHook] = []
_clients_made: weakref.WeakSet[Any] = weakref.WeakSet()


@cache
def client(service: str, read_timeout: float | None = None) -> Any:
    """A shared boto3 client for `service` with short timeouts and standard retries.

    A long poll (SQS `WaitTimeSeconds`) needs a `read_timeout` longer than its wait.
    """
    config = _CONFIG if read_timeout is None else _CONFIG.merge(Config(read_timeout=read_timeout))
    made = boto3.session.Session().client(service, config=config)
    _clients_made.add(made)
    for hook in _client_hooks:
        hook(made)
    return made


def on_new_client(hook: ClientHook) -> None:
    """Give every client, those made already and those made from now on, to `hook`: e.g. to
    register botocore event handlers on it (the local stack records each call the code
    makes, to check it against the template's IAM policies; tests inject AWS's faults)."""
    _client_hooks.append(hook)
    for made in list(_clients_made):
        hook(made)


def forget_client_hook(hook: ClientHook) -> None:
    """Give no more new clients to `hook` (what it did to clients so far stays done)."""
    if hook in _client_hooks:
        _client_hooks.remove(hook)


def reset_clients() -> None:
    """Forget cached clients (tests call this when they switch AWS endpoints)."""
    client.cache_clear()
