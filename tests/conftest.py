"""Shared fixtures: a safe AWS environment, moto with the template's tables, Lambda context."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cmlfleet import bootstrap
from devstack import awscalls
from devstack.lambdas import LambdaContext
from devstack.template import load_sam_template

EVENTS_DIR = Path(__file__).parent / "events"

# Never reach a real account: fake credentials, and the switches moto needs.
SAFE_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "CMLFleetTests",
    "POWERTOOLS_SERVICE_NAME": "tests",
}
for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(_name, None)
os.environ.update(SAFE_ENVIRONMENT)

# Every local stack this session starts records its deployables' AWS calls here, and
# tests/iam/test_session_calls.py (run last) checks them all against the IAM policies.
CALL_LOG = Path(tempfile.mkdtemp(prefix="cmlfleet-aws-calls-"))
os.environ[awscalls.LOG_VARIABLE] = str(CALL_LOG)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `after_everything` run last (they check what the others recorded)."""
    last = [item for item in items if item.get_closest_marker("after_everything")]
    items[:] = [item for item in items if item not in last] + last


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext(
        function_name="test-function",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:test-function",
    )


def _table_definition(logical_id: str) -> dict[str, Any]:
    """A table's creation arguments, taken from template.yaml so tests use the real schema."""
    properties = load_sam_template()["Resources"][logical_id]["Properties"]
    definition = {
        key: properties[key]
        for key in (
            "AttributeDefinitions",
            "KeySchema",
            "GlobalSecondaryIndexes",
            "StreamSpecification",
            "BillingMode",
        )
        if key in properties
    }
    if "StreamSpecification" in definition:
        definition["StreamSpecification"] = {
            "StreamEnabled": True,
            **definition["StreamSpecification"],
        }
    return definition


class FleetAws:
    """moto with the template's tables and topic, and the environment the functions read."""

    def __init__(self) -> None:
        self.dynamodb = boto3.client("dynamodb")
        self.sns = boto3.client("sns")
        self.sqs = boto3.client("sqs")
        self.table_name = "workers"
        self.idempotency_table_name = "idempotency"
        self.dynamodb.create_table(TableName=self.table_name, **_table_definition("WorkersTable"))
        self.dynamodb.create_table(
            TableName=self.idempotency_table_name, **_table_definition("IdempotencyTable")
        )
        self.topic_arn = self.sns.create_topic(Name="domain-events")["TopicArn"]

    def environment(self) -> dict[str, str]:
        return {
            "TABLE_NAME": self.table_name,
            "IDEMPOTENCY_TABLE_NAME": self.idempotency_table_name,
            "TOPIC_ARN": self.topic_arn,
            "EVENT_TTL_DAYS": "7",
        }

    def subscribe_queue(self, name: str = "subscriber") -> str:
        """A queue subscribed to the topic with raw delivery, as a relay's would be."""
        queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.sns.subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        return str(queue_url)

    def receive_all(self, queue_url: str) -> list[str]:
        bodies: list[str] = []
        while True:
            response = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
            messages = response.get("Messages", [])
            if not messages:
                return bodies
            for message in messages:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def fleet_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetAws]:
    """moto (in-process) with the fleet's tables and topic; adapters rebuilt around it."""
    with mock_aws():
        aws = FleetAws()
        for name, value in aws.environment().items():
            monkeypatch.setenv(name, value)
        bootstrap.reset()
        yield aws
    bootstrap.reset()
