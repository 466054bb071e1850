"""Dependencies of the routes: the composition root, and who the caller is."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request

from cmlfleet import bootstrap
from cmlfleet.adapters import aws
from cmlfleet.adapters.ec2 import BotoEc2Fleet
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.identity import AuthenticationError, JwksSigningKeys, Principal, TokenVerifier
from cmlfleet.services.cml_certificates import CmlCertificateCommands
from cmlfleet.services.commands import LaunchDefaults, WorkerCommands
from cmlfleet.services.labs import LabsCommands
from fleet_api.errors import UnauthorizedError
from fleet_api.settings import load_api_settings


@dataclass
class Container:
    commands: WorkerCommands
    verifier: TokenVerifier
    tickets: DynamoDbTicketStore
    labs: LabsCommands | None = None
    certificates: CmlCertificateCommands | None = None


@lru_cache(maxsize=1)
def build_container() -> Container:
    """Real adapters, built on first use (never at import: tests start moto first)."""
    from datetime import timedelta

    settings = load_api_settings()
    repository = DynamoDbWorkerRepository(
        settings.table_name, aws.client("dynamodb"), timedelta(days=settings.event_ttl_days)
    )
    commands = WorkerCommands(
        repository,
        BotoEc2Fleet(aws.client("ec2")),
        LaunchDefaults(
            ami_id=settings.cml_ami_id,
            instance_type=settings.worker_instance_type,
            stack=settings.stack_name,
            subnet_id=settings.worker_subnet_id,
            security_group_ids=settings.security_groups,
            key_name=settings.worker_key_name,
            instance_profile_arn=settings.worker_instance_profile_arn,
            detailed_monitoring=settings.worker_detailed_monitoring,
            allowed_instance_types=frozenset(settings.launchable_instance_types),
        ),
        region=settings.aws_region,
        source=settings.event_source,
    )
    verifier = TokenVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        keys=JwksSigningKeys(settings.jwks_url),
        roles_claim=settings.roles_claim,
        owner_claim=settings.owner_claim,
    )
    tickets = DynamoDbTicketStore(
        settings.table_name, aws.client("dynamodb"), settings.stream_ticket_ttl_seconds
    )
    labs = LabsCommands(
        repository,
        bootstrap.cml_client,
        bootstrap.cml_endpoint,
        source=settings.event_source,
        min_interval=settings.labs_refresh_min_interval_seconds,
        deadline=settings.cml_timeout_seconds * 4,
    )
    return Container(commands, verifier, tickets, labs, CmlCertificateCommands(repository))


def get_container() -> Container:
    return build_container()


ContainerDep = Annotated[Container, Depends(get_container)]


def authenticate(request: Request, container: ContainerDep) -> Principal:
    """The verified caller, from `Authorization: Bearer <token>`; 401 otherwise.

    A plain `def`: fetching the issuer's keys blocks, so FastAPI runs it in a thread.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("a bearer token is required")
    try:
        return container.verifier.verify(token.strip())
    except AuthenticationError as error:
        raise UnauthorizedError(error.reason) from None


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
