"""The EC2 simulator: what EC2 would have reported for each change moto made at once."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.ec2sim import Delays, Ec2Simulator


class Bus:
    """moto EventBridge with a catch-all EC2 rule into a queue, read back in order."""

    def __init__(self) -> None:
        self.events = boto3.client("events")
        self.sqs = boto3.client("sqs")
        self.queue = self.sqs.create_queue(QueueName="ec2-events")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.events.put_rule(Name="ec2", EventPattern=json.dumps({"source": ["aws.ec2"]}))
        self.events.put_targets(Rule="ec2", Targets=[{"Id": "q", "Arn": arn}])

    def states(self) -> list[tuple[str, str]]:
        seen = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return seen
            for message in messages:
                event: dict[str, Any] = json.loads(message["Body"])
                assert event["detail-type"] == "EC2 Instance State-change Notification"
                seen.append((event["detail"]["instance-id"], event["detail"]["state"]))
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def moto_ec2() -> Any:
    with mock_aws():
        yield boto3.client("ec2"), Bus()


def simulator(ec2: Any, bus: Bus, delay: float = 0.0) -> Ec2Simulator:
    return Ec2Simulator(
        ec2,
        bus.events,
        region="us-east-1",
        account="123456789012",
        delays=Delays(boot=delay, stop=delay, terminate=delay),
    )


def launch(ec2: Any) -> str:
    instance_id: str = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)[
        "Instances"
    ][0]["InstanceId"]
    return instance_id


def step(sim: Ec2Simulator) -> None:
    sim._observe()
    sim._emit_due()


def test_a_launch_is_reported_as_pending_then_running(moto_ec2: Any) -> None:
    ec2, bus = moto_ec2
    sim = simulator(ec2, bus)
    instance = launch(ec2)
    step(sim)
    assert bus.states() == [(instance, "pending"), (instance, "running")]


def test_the_final_state_waits_for_its_delay(moto_ec2: Any) -> None:
    ec2, bus = moto_ec2
    sim = simulator(ec2, bus, delay=0.3)
    instance = launch(ec2)
    step(sim)
    assert bus.states() == [(instance, "pending")]
    deadline = time.monotonic() + 5
    while sim._due:
        assert time.monotonic() < deadline
        sim._emit_due()
        time.sleep(0.02)
    assert bus.states() == [(instance, "running")]


def test_stop_start_and_terminate_each_play_their_transition(moto_ec2: Any) -> None:
    ec2, bus = moto_ec2
    instance = launch(ec2)
    sim = simulator(ec2, bus)
    sim.adopt_existing()
    step(sim)
    assert bus.states() == []  # an adopted instance is settled
    ec2.stop_instances(InstanceIds=[instance])
    step(sim)
    ec2.start_instances(InstanceIds=[instance])
    step(sim)
    ec2.terminate_instances(InstanceIds=[instance])
    step(sim)
    assert [state for _, state in bus.states()] == [
        "stopping",
        "stopped",
        "pending",
        "running",
        "shutting-down",
        "terminated",
    ]


def test_a_newer_change_cancels_what_was_still_to_come(moto_ec2: Any) -> None:
    ec2, bus = moto_ec2
    sim = simulator(ec2, bus, delay=60)
    instance = launch(ec2)
    step(sim)
    ec2.terminate_instances(InstanceIds=[instance])
    step(sim)
    sim._due = [(0.0, *entry[1:]) for entry in sim._due]  # everything is due now
    sim._emit_due()
    assert [state for _, state in bus.states()] == ["pending", "shutting-down", "terminated"]
