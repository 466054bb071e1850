"""The demo fleet the local stack starts with: moto EC2 instances registered as workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmlfleet import bootstrap
from cmlfleet.adapters.ec2 import OWNER_TAG, STACK_TAG, WORKER_ID_TAG
from cmlfleet.domain.worker import register_worker
from cmlfleet.events.envelope import envelopes
from cmlfleet.ids import new_worker_id
from cmlfleet.settings import load_settings
from cmlfleet.timeutil import utc_now

DEMO_AMI = "ami-0c0ffee0c0ffee000"
DEMO_WORKERS = (("cml-lab-a", "alice"), ("cml-lab-b", "bob"), ("cml-training", "alice"))


@dataclass(frozen=True)
class DemoWorker:
    worker_id: str
    instance_id: str
    name: str
    owner: str


def worker_tags(name: str, owner: str, worker_id: str) -> dict[str, str]:
    """The tags the API gives a worker it launches (IAM lets a stack operate only those)."""
    return {
        "Name": name,
        OWNER_TAG: owner,
        WORKER_ID_TAG: worker_id,
        STACK_TAG: load_settings().stack_name,
    }


def launch_instance(
    ec2: Any, name: str, owner: str, instance_type: str = "c5.2xlarge"
) -> dict[str, Any]:
    """Run one instance in moto, tagged as the API tags a worker it launches."""
    tags = worker_tags(name, owner, new_worker_id())
    response = ec2.run_instances(
        ImageId=DEMO_AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
            }
        ],
    )
    instance: dict[str, Any] = response["Instances"][0]
    return instance


def register_instance(instance: dict[str, Any], name: str, owner: str, region: str) -> DemoWorker:
    """Save the worker of an instance `launch_instance` ran, with its `worker.created` event
    (the outbox)."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    change = register_worker(
        name=name,
        owner=owner,
        now=utc_now(),
        instance_id=instance["InstanceId"],
        instance_type=instance.get("InstanceType"),
        ami_id=instance.get("ImageId"),
        region=region,
        ec2_state="running",
        tags=tags,
        worker_id=tags.get(WORKER_ID_TAG),
    )
    worker = change.worker
    events = envelopes(
        change.events,
        worker_id=worker.worker_id,
        owner=worker.owner,
        owner_sub=worker.owner_sub,  # None: the demo owners are matched by name
        version=worker.version,
        source=load_settings().event_source,
    )
    bootstrap.worker_repository().save(worker, events, expected_version=0)
    return DemoWorker(worker.worker_id, instance["InstanceId"], name, owner)


def seed_demo_fleet(ec2: Any, region: str, count: int = len(DEMO_WORKERS)) -> list[DemoWorker]:
    workers = []
    for name, owner in DEMO_WORKERS[:count]:
        instance = launch_instance(ec2, name, owner)
        workers.append(register_instance(instance, name, owner, region))
    return workers
