"""The composition root of the Lambda functions: real adapters, built once per process."""

from __future__ import annotations

from contextvars import ContextVar
from datetime import timedelta
from functools import cache, lru_cache
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
    aws.reset_clients()


# ---- the workers' CML API ------------------------------------------------------------------

# On Lambda every function has a process of its own, and so its own cached secrets and CML
# sessions; the local stack runs them all in one, and names here the function running, so
# that each keeps its own as on AWS (and its own reads are made, and checked against IAM).
process_scope: ContextVar[str] = ContextVar("cmlfleet_process_scope", default="")


def cml_credentials() -> CmlCredentials:
    """The CML username and password from Secrets Manager (cached by Powertools for 5 min)."""
    name = load_settings().cml_credentials_secret
    if not name:
        raise ConfigurationError("CML_CREDENTIALS_SECRET is not set")
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


def cml_client(credentials: CmlCredentials | None = None) -> CmlClient:
    """A CML client for one invocation's event loop; tokens are kept across invocations.

    Pass the credentials when calling from a running loop (fetch them with
    `asyncio.to_thread(cml_credentials)`): the secret lookup blocks.
    """
    from cmlfleet.cml.client import CmlClient

    settings = load_settings()
    client = CmlClient(
        (lambda: credentials) if credentials is not None else cml_credentials,
        timeout=settings.cml_timeout_seconds,
        verify_tls=settings.cml_verify_tls,
    )
    client.share_state_with(_cml_shared(process_scope.get()))
    return client
