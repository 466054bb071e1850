"""One API with its fleet for a whole test module: the `api` fixture's wiring, plus labs.

moto's tables and the issuer's RSA key cost most of a second per test; the fuzzing and
hostile-input modules run hundreds of requests, so they share one fleet per module
(a fleet that keeps changing under them is a harsher target anyway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from cmlfleet import bootstrap
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.cml.client import CmlClient
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.services.labs import LabsCommands
from devstack.cmlsim import CmlSimulator
from devstack.issuer import DevelopmentIssuer
from fleet_api.deps import get_container
from fleet_api.main import create_app
from tests.api.conftest import ISSUER, Api, api_container
from tests.conftest import FleetAws

CML_PASSWORD = "secret-password"


@dataclass
class Fleet(Api):
    """The `Api` of tests/api/conftest.py, with the simulated CML hosts of its workers."""

    cml: CmlSimulator
    worker_ids: list[str] = field(default_factory=list)  # every worker made, in order
    ready: dict[str, str] = field(default_factory=dict)  # a worker last seen in this status

    def add_worker(self, name: str, owner: str, status: str) -> str:
        """A worker in `status` (as EC2's reports would put it), with a CML host."""
        worker = self.create_worker(name, owner)
        self.set_status(worker["worker_id"], status)
        self.cml.add_worker(worker["instance_id"])
        self.worker_ids.append(worker["worker_id"])
        return str(worker["worker_id"])

    def snapshot(self) -> list[tuple[str, int]]:
        """Every stored worker and its version: equal before and after means untouched."""
        workers = self.container.commands._repository.list_workers()
        return sorted((worker.worker_id, worker.version) for worker in workers)


@contextmanager
def running_fleet() -> Iterator[Fleet]:
    """moto, the API wired as the `api` fixture wires it, labs, and three seeded workers."""
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        aws = FleetAws()
        for name, value in aws.environment().items():
            patch.setenv(name, value)
        bootstrap.reset()
        issuer = DevelopmentIssuer(ISSUER, audience="cmlfleet-tests")
        ec2 = boto3.client("ec2")
        cml = CmlSimulator(username="admin", password=CML_PASSWORD)
        labs = LabsCommands(
            DynamoDbWorkerRepository(aws.table_name, aws.dynamodb, timedelta(days=7)),
            _cml_client(cml),
            lambda w: cml.worker_url(w.instance_id) if w.instance_id else None,
            source="urn:test",
            min_interval=0,
        )
        container = api_container(aws, issuer, ec2, labs)
        app = create_app()
        app.dependency_overrides[get_container] = lambda: container
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                fleet = Fleet(client, aws, issuer, container, ec2, cml)
                for name, owner, status in [
                    ("alice-running", "alice", "running"),
                    ("alice-stopped", "alice", "stopped"),
                    ("bob-running", "bob", "running"),
                ]:
                    fleet.add_worker(name, owner, status)
                yield fleet
        finally:
            bootstrap.reset()


def _cml_client(cml: CmlSimulator) -> Any:
    @asynccontextmanager
    async def client() -> AsyncIterator[CmlClient]:
        async with CmlClient(
            lambda: CmlCredentials("admin", CML_PASSWORD),
            transport=httpx.ASGITransport(app=cml.app),
            timeout=2,
            retries=0,
        ) as session:
            yield session

    return client
