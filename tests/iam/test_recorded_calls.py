"""Every AWS call the deployables make, allowed by their own roles' policies.

moto evaluates no IAM. So the local stack records each call each deployable makes
(devstack/awscalls.py) while a scenario drives every path a user or a schedule takes:
workers launched, stopped, started, imported and terminated through the API, labs
refreshed, metrics collected, a stream ticket redeemed and a stream resumed from the event
log, a poison message released by the relay, a dead relay's queue reaped, the relay's own
queue removed at its stop. Each recorded call is then evaluated by iam-simulate against the
policies the SAM-transformed template gave that deployable's role.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cmlfleet.adapters.ec2 import IMPORTABLE_TAG
from cmlfleet.services.reaper import HEARTBEAT_TAG, TOPIC_TAG
from devstack import awscalls, iamcheck, iampolicies
from devstack.ec2sim import Delays
from devstack.fleetstack import FleetStack
from tests.localfleet import eventually, running_fleet
from tests.sse_client import SseStream

pytestmark = pytest.mark.e2e

# (deployable, action) that the scenario must have exercised: had a path not run, a
# missing permission on it would pass unseen.
EXPECTED = {
    ("ApiFunction", "ec2:RunInstances"),
    ("ApiFunction", "ec2:CreateTags"),
    ("ApiFunction", "iam:PassRole"),
    ("ApiFunction", "ec2:StopInstances"),
    ("ApiFunction", "ec2:StartInstances"),
    ("ApiFunction", "ec2:TerminateInstances"),
    ("ApiFunction", "ec2:DescribeInstances"),
    ("ApiFunction", "dynamodb:PutItem"),
    ("ApiFunction", "secretsmanager:GetSecretValue"),
    ("InstanceStateFunction", "dynamodb:Query"),
    ("InstanceStateFunction", "dynamodb:UpdateItem"),
    ("EventPublisherFunction", "sns:Publish"),
    ("MetricsCollectorFunction", "cloudwatch:GetMetricData"),
    ("MetricsCollectorFunction", "secretsmanager:GetSecretValue"),
    # The workers' CML certificates: read and pinned by the collectors, confirmed by the API.
    ("MetricsCollectorFunction", "dynamodb:GetItem"),
    ("MetricsCollectorFunction", "dynamodb:PutItem"),
    ("LabsRefreshFunction", "dynamodb:GetItem"),
    ("ApiFunction", "dynamodb:GetItem"),
    ("LabsRefreshFunction", "dynamodb:PutItem"),
    ("QueueReaperFunction", "sqs:ListQueues"),
    ("QueueReaperFunction", "sqs:DeleteQueue"),
    ("QueueReaperFunction", "sns:Unsubscribe"),
    ("Relay", "sqs:CreateQueue"),
    ("Relay", "sqs:TagQueue"),
    ("Relay", "sqs:SetQueueAttributes"),
    ("Relay", "sns:Subscribe"),
    ("Relay", "sqs:ReceiveMessage"),
    ("Relay", "sqs:DeleteMessage"),
    ("Relay", "sqs:ChangeMessageVisibility"),
    ("Relay", "dynamodb:DeleteItem"),
    ("Relay", "dynamodb:Query"),
    ("Relay", "sns:Unsubscribe"),
    ("Relay", "sqs:DeleteQueue"),
}


def admin(fleet: FleetStack) -> dict[str, str]:
    assert fleet.issuer is not None
    return {"Authorization": f"Bearer {fleet.issuer.token('ada', 'admin')}"}


def call(fleet: FleetStack, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, fleet.url + path, json=body, headers=admin(fleet), timeout=30)
    assert response.is_success, response.text
    return response.json()


def status(fleet: FleetStack, worker_id: str) -> str:
    return str(call(fleet, "GET", f"/api/workers/{worker_id}")["status"])


def until_status(fleet: FleetStack, worker_id: str, wanted: str) -> None:
    eventually(lambda: status(fleet, worker_id), wanted.__eq__, timeout=60)


def drive_every_path(fleet: FleetStack) -> None:
    assert fleet.stack is not None
    stack = fleet.stack
    sqs = stack.client("sqs")
    # Workers: launched (with its instance role), stopped, started, labs, terminated.
    worker_id = call(fleet, "POST", "/api/workers", {"name": "iam-check"})["worker_id"]
    until_status(fleet, worker_id, "running")
    call(fleet, "POST", f"/api/workers/{worker_id}/labs/refresh")
    call(fleet, "POST", f"/api/workers/{worker_id}/stop")
    until_status(fleet, worker_id, "stopped")
    call(fleet, "POST", f"/api/workers/{worker_id}/start")
    until_status(fleet, worker_id, "running")
    # An instance the account owner opted in, imported.
    instance_id = stack.client("ec2").run_instances(
        ImageId="ami-0c0ffee0c0ffee000",
        MinCount=1,
        MaxCount=1,
        InstanceType="c5.large",
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": IMPORTABLE_TAG, "Value": "true"}]}
        ],
    )["Instances"][0]["InstanceId"]
    imported = call(fleet, "POST", "/api/workers/import", {"instance_id": instance_id})
    # Its CML certificate, fetched by a collector (nothing else is sent), then confirmed.
    pin_path = f"/api/workers/{imported['worker_id']}/cml-certificate"
    pin = eventually(lambda: call(fleet, "GET", pin_path), lambda p: p["sha256"], timeout=60)
    assert pin["state"] == "pending"
    call(fleet, "POST", pin_path + "/confirm", {"sha256": pin["sha256"]})
    # A stream ticket, redeemed by the relay, resuming from the event log.
    ticket = call(fleet, "POST", "/api/events/tickets")["ticket"]
    cursor = "01000000-0000-7000-8000-000000000000"  # older than the ring: the log is read
    with SseStream(f"{fleet.url}/api/events/stream?ticket={ticket}&last_event_id={cursor}") as s:
        assert s.next().event == "connected"
    # A poison message: the relay releases it at once; redrive moves it to the DLQ.
    relay_queue = own_relay_queue(fleet)
    sqs.send_message(QueueUrl=relay_queue, MessageBody="not a cloud event")
    dlq = sqs.get_queue_url(QueueName=stack.outputs["RelayDeadLetterQueueArn"].rsplit(":", 1)[1])[
        "QueueUrl"
    ]
    eventually(lambda: sqs.receive_message(QueueUrl=dlq).get("Messages"), bool, timeout=60)
    # A dead relay's queue (its heartbeat an hour old), for the reaper.
    dead = dead_relay_queue(fleet, relay_queue)
    eventually(lambda: queue_exists(sqs, dead), lambda exists: not exists, timeout=60)
    call(fleet, "DELETE", f"/api/workers/{worker_id}")
    until_status(fleet, worker_id, "terminated")
    # The collectors have run on their schedules by now (sped up 60 times).
    for function_id in ("MetricsCollectorFunction", "LabsRefreshFunction"):
        eventually(lambda f=function_id: stack.schedules[f].runs, lambda runs: runs >= 2)


def own_relay_queue(fleet: FleetStack) -> str:
    assert fleet.stack is not None
    prefix = relay_prefix(fleet)
    urls = fleet.stack.client("sqs").list_queues(QueueNamePrefix=prefix + "-")["QueueUrls"]
    (url,) = urls
    return str(url)


def relay_prefix(fleet: FleetStack) -> str:
    assert fleet.stack is not None
    reaper = fleet.stack.functions["QueueReaperFunction"].name
    configuration = fleet.stack.client("lambda").get_function_configuration(FunctionName=reaper)
    return str(configuration["Environment"]["Variables"]["RELAY_QUEUE_PREFIX"])


def dead_relay_queue(fleet: FleetStack, like: str) -> str:
    assert fleet.stack is not None
    sqs, sns = fleet.stack.client("sqs"), fleet.stack.client("sns")
    topic = fleet.stack.outputs["DomainEventsTopicArn"]
    name = f"{relay_prefix(fleet)}-{'d' * 16}"
    tags = {TOPIC_TAG: topic, HEARTBEAT_TAG: str(int(time.time()) - 3600)}
    url = str(sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])
    return url


def queue_exists(sqs: Any, url: str) -> bool:
    return url in sqs.list_queues().get("QueueUrls", [])


@pytest.fixture(scope="module")
def recording() -> Path:
    """The recorded run of a local stack that went down every path."""
    with running_fleet(
        ec2_delays=Delays(boot=0.5, stop=0.5, terminate=0.5),
        schedule_speedup=60,
        overrides={"POWERTOOLS_LOG_LEVEL": "CRITICAL"},
    ) as fleet:
        assert fleet.stack is not None
        recorded = fleet.stack.recording
        assert recorded is not None, "the local stack records only with CMLFLEET_AWS_CALL_LOG"
        drive_every_path(fleet)
    # Read after the stop: the relay's last calls (unsubscribe, delete its queue) are in.
    return recorded.directory


def test_the_scenario_made_every_kind_of_call_the_deployables_make(recording: Path) -> None:
    made = {(r.caller, r.request.action) for r in awscalls.read_requests(recording)}
    assert EXPECTED - made == set()


def test_every_recorded_call_is_allowed_by_its_deployables_policies(recording: Path) -> None:
    failures = iamcheck.check_recording(recording)
    assert not failures, "\n\n".join(f.message for f in failures)


def without_action(
    policies: dict[str, iampolicies.DeployablePolicies], deployable: str, action: str
) -> dict[str, iampolicies.DeployablePolicies]:
    """The deployable's policies with `action` taken out of every statement."""
    role = policies[deployable]
    documents = []
    for name, document in role.policies:
        changed = json.loads(json.dumps(document))
        for statement in changed["Statement"]:
            actions = statement["Action"]
            listed = [actions] if isinstance(actions, str) else actions
            statement["Action"] = [a for a in listed if a != action] or ["sqs:GetQueueUrl"]
        documents.append((name, changed))
    changed_role = iampolicies.DeployablePolicies(
        role.deployable, role.role_id, role.role_arn, tuple(documents)
    )
    return policies | {deployable: changed_role}


def test_a_permission_taken_away_fails_the_check_naming_the_call_the_role_and_the_statement(
    recording: Path,
) -> None:
    # The relay's release of a poison message, which the template once lacked (finding A3).
    policies = iampolicies.read(recording / awscalls.POLICIES_FILE)
    weakened = without_action(policies, "Relay", "sqs:ChangeMessageVisibility")

    failures = iamcheck.check(awscalls.read_requests(recording), weakened)

    assert failures
    assert {f.recorded.request.action for f in failures} == {"sqs:ChangeMessageVisibility"}
    message = failures[0].message
    assert "sqs.ChangeMessageVisibility(QueueUrl=" in message
    assert "RelayTaskRole" in message
    assert "a statement that would allow it" in message
    assert '"Action": "sqs:ChangeMessageVisibility"' in message
