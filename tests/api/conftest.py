"""The API in-process (TestClient) on moto, with tokens from the development issuer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from cmlfleet.adapters.ec2 import BotoEc2Fleet
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.identity import StaticSigningKeys, TokenVerifier
from cmlfleet.services.cml_certificates import CmlCertificateCommands
from cmlfleet.services.commands import LaunchDefaults, WorkerCommands
from cmlfleet.services.labs import LabsCommands
from devstack.issuer import DevelopmentIssuer
from fleet_api.deps import Container, get_container
from fleet_api.main import create_app
from tests.conftest import FleetAws

ISSUER = "https://issuer.test/pool"
AMI = "ami-0c0ffee0c0ffee000"
STACK = "cml-fleet-test"


@dataclass
class Api:
    """The API under test, its AWS, and ready-made callers of each role."""

    client: TestClient
    aws: FleetAws
    issuer: DevelopmentIssuer
    container: Container
    ec2: Any

    def headers(self, username: str, role: str | None, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(username, role, **claims)}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.headers("ada", "admin")

    @property
    def manager(self) -> dict[str, str]:
        return self.headers("max", "manager")

    def user(self, name: str = "alice") -> dict[str, str]:
        return self.headers(name, "user")

    def launch_instance(self, state: str = "running", tags: dict[str, str] | None = None) -> str:
        """An EC2 instance that is not (yet) a worker (opted in to import unless `tags`)."""
        tags = {"cmlfleet:importable": "true"} if tags is None else tags
        instance_id: str = self.ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="c5.large",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
                }
            ],
        )["Instances"][0]["InstanceId"]
        if state == "stopped":
            self.ec2.stop_instances(InstanceIds=[instance_id])
        elif state == "terminated":
            self.ec2.terminate_instances(InstanceIds=[instance_id])
        return instance_id

    def create_worker(self, name: str = "lab", owner: str = "alice") -> dict[str, Any]:
        response = self.client.post(
            "/api/workers", json={"name": name, "owner": owner}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def set_status(self, worker_id: str, status: str) -> None:
        """Put a stored worker in a status, as EC2's reports would."""
        repository = self.container.commands._repository
        worker = repository.get(worker_id)
        assert worker is not None
        changed = worker.model_copy(
            update={"status": WorkerStatus(status), "version": worker.version + 1}
        )
        repository.save(changed, [], expected_version=worker.version)


def worker_instance_profile() -> str:
    """The instance profile new workers get (the CloudWatch agent's role), as the stack's."""
    iam = boto3.client("iam")
    try:
        return str(
            iam.get_instance_profile(InstanceProfileName="workers")["InstanceProfile"]["Arn"]
        )
    except iam.exceptions.NoSuchEntityException:
        pass
    trust = json.dumps(
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ]
        }
    )
    iam.create_role(RoleName="worker", AssumeRolePolicyDocument=trust)
    profile = iam.create_instance_profile(InstanceProfileName="workers")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="workers", RoleName="worker")
    return str(profile["Arn"])


def api_container(
    aws: FleetAws, issuer: DevelopmentIssuer, ec2: Any, labs: LabsCommands | None = None
) -> Container:
    """The API's adapters on moto, with tokens checked against `issuer`'s key."""
    repository = DynamoDbWorkerRepository(aws.table_name, aws.dynamodb, timedelta(days=7))
    return Container(
        commands=WorkerCommands(
            repository,
            BotoEc2Fleet(ec2),
            LaunchDefaults(
                ami_id=AMI,
                instance_type="c5.2xlarge",
                stack=STACK,
                instance_profile_arn=worker_instance_profile(),
                allowed_instance_types=frozenset({"m5zn.metal", "m7i.metal-24xl"}),
            ),
            region="us-east-1",
            source="urn:cmlfleet:test",
        ),
        verifier=TokenVerifier(
            issuer=issuer.issuer,
            audience=issuer.audience,
            keys=StaticSigningKeys(issuer.jwks()),
        ),
        tickets=DynamoDbTicketStore(aws.table_name, aws.dynamodb, ttl_seconds=60),
        labs=labs,
        certificates=CmlCertificateCommands(repository),
    )


@pytest.fixture
def api(fleet_aws: FleetAws) -> Iterator[Api]:
    issuer = DevelopmentIssuer(ISSUER, audience="cmlfleet-tests")
    ec2 = boto3.client("ec2")
    container = api_container(fleet_aws, issuer, ec2)
    app = create_app()
    app.dependency_overrides[get_container] = lambda: container
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, fleet_aws, issuer, container, ec2)
