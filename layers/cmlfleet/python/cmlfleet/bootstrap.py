"""The composition root of the Lambda functions: real adapters, built once per process."""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import timedelta
from functools import cache, lru_cache, partial
from typing import TYPE_CHECKING, Any

from cmlfleet.adapters import aws
from cmlfleet.adapters.ec2 import BotoEc2Fleet
from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.domain.worker import Worker
from cmlfleet.settings import ConfigurationError, load_settings

if TYPE_CHECKING:  # the CML client (httpx) is imported by the functions that call CML only
    from cmlfleet.cml.client import CmlClient, CmlSharedState
    from cmlfleet.cml.models import CmlCredentials
    from cmlfleet.cml.trust import CmlTrust


@lru_cache(maxsize=1)
def worker_repository() -> DynamoDbWorkerRepository:
    settings = load_settings()
    return DynamoDbWorkerRepository(
        settings.table_name, aws.client("dynamodb"), timedelta(days=settings.event_ttl_days)
    )


@lru_cache(maxsize=1)
def event_publisher() -> SnsEventPublisher:
    return SnsEventPublisher(load_settings().topic_arn, aws.client("sns"))


@lru_cache(maxsize=1)
def ec2_fleet() -> BotoEc2Fleet:
    return BotoEc2Fleet(aws.client("ec2"))


def reset() -> None:
    """Forget every built adapter (tests switch environments between cases)."""
    load_settings.cache_clear()
    worker_repository.cache_clear()
    event_publisher.cache_clear()
    ec2_fleet.cache_clear()
    _secrets.cache_clear()
    _warn_unverified.cache_clear()
    aws.reset_clients()


# ---- the workers' CML API ------------------------------------------------------------------

# On Lambda every function has a process of its own, and so its own cached secrets and CML
# sessions; the local stack runs them all in one, and names here the function running, so
# that each keeps its own as on AWS (and its own reads are made, and checked against IAM).
process_scope: ContextVar[str] = ContextVar("cmlfleet_process_scope", default="")


def cml_credentials(worker_id: str | None = None) -> CmlCredentials:
    """The CML username and password from Secrets Manager (cached by Powertools for 5 min).

    With `{worker_id}` in CML_CREDENTIALS_SECRET, each worker has a secret of its own, so
    a host that leaks its login leaks no other worker's.
    """
    name = load_settings().cml_credentials_secret
    if not name:
        raise ConfigurationError("CML_CREDENTIALS_SECRET is not set")
    if "{worker_id}" in name:
        if not worker_id:
            raise ConfigurationError("CML_CREDENTIALS_SECRET is per worker: name the worker")
        name = name.replace("{worker_id}", worker_id)
    secret = _secrets(process_scope.get()).get(name, transform="json", max_age=300)
    if not isinstance(secret, dict) or not {"username", "password"} <= secret.keys():
        raise ConfigurationError(f"secret {name} must be JSON with username and password")
    from cmlfleet.cml.models import CmlCredentials

    return CmlCredentials(str(secret["username"]), str(secret["password"]))


@cache
def _cml_shared(scope: str) -> CmlSharedState:
    """Login tokens and breaker state outlive one invocation (a warm Lambda reuses them)."""
    from cmlfleet.cml.client import CmlSharedState

    return CmlSharedState()


@cache
def _secrets(scope: str) -> Any:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider(boto3_client=aws.client("secretsmanager"))


def cml_endpoint(worker: Worker) -> str | None:
    """The worker's CML base URL from CML_ENDPOINT_TEMPLATE, or None if it lacks a field."""
    fields = {
        "private_ip": worker.private_ip,
        "instance_id": worker.instance_id,
        "worker_id": worker.worker_id,
    }
    template = load_settings().cml_endpoint_template
    needed = {name for name in fields if "{" + name + "}" in template}
    if any(fields[name] is None for name in needed):
        return None
    return template.format(**{k: v or "" for k, v in fields.items()})


def cml_client() -> CmlClient:
    """A CML client for one invocation's event loop; tokens are kept across invocations.

    It sends nothing to a worker its trust has not admitted (`CmlClient.admit`), and each
    admitted worker gets its own credentials (looked up at login, in a thread).
    """
    from cmlfleet.cml.client import CmlClient

    settings = load_settings()
    client = CmlClient(
        cml_credentials,
        timeout=settings.cml_timeout_seconds,
        verify_tls=settings.cml_verify_tls,
        trust=cml_trust(),
    )
    client.share_state_with(_cml_shared(process_scope.get()))
    return client


def cml_trust() -> CmlTrust:
    """How the workers' certificates are checked: pinned (default), a CA's, or not at all."""
    from cmlfleet.cml.trust import CmlTrust

    settings = load_settings()
    mode = settings.cml_trust_mode
    if mode == "off":
        _warn_unverified()
    if mode == "ca" and not os.path.isfile(settings.cml_ca_bundle):
        raise ConfigurationError(f"CML_CA_BUNDLE {settings.cml_ca_bundle} is not a file")
    return CmlTrust(
        mode,
        lambda worker_id: partial(cml_credentials, worker_id),
        store=worker_repository() if mode == "pin" else None,
        ca_bundle=settings.cml_ca_bundle or None,
        check_hostname=settings.cml_ca_check_hostname,
        timeout=settings.cml_timeout_seconds,
    )


@cache
def _warn_unverified() -> None:
    from aws_lambda_powertools import Logger

    Logger(child=True).warning(
        "CML_VERIFY_TLS=false: the workers' CML certificates are not verified, and their "
        "credentials go to whatever answers at their address"
    )
