"""The EC2 side of the fleet: launching, describing, starting, stopping, terminating."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from cmlfleet.domain.worker import IMPORTABLE_TAG as IMPORTABLE_TAG  # set by the account owner

WORKER_ID_TAG = "cmlfleet:worker-id"
OWNER_TAG = "cmlfleet:owner"
# The stack a worker belongs to: IAM lets each stack operate only the instances tagged so.
STACK_TAG = "cmlfleet:stack"
# family.size, the size perhaps with a suffix: m5zn.metal, m7i.metal-24xl, c7i.metal-48xl.
INSTANCE_TYPE_PATTERN = r"^[a-z0-9-]+\.[a-z0-9-]+$"
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


class CloudError(Exception):
    """EC2 refused or failed a request; `code` is AWS's error code, `message` its words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    @property
    def not_found(self) -> bool:
        return self.code in NOT_FOUND_CODES

    @property
    def conflicts_with_state(self) -> bool:
        return self.code == "IncorrectInstanceState"


@dataclass(frozen=True)
class LaunchSpec:
    """What a new worker's instance is made of."""

    worker_id: str
    name: str
    owner: str
    stack: str
    ami_id: str
    instance_type: str
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    instance_profile_arn: str | None = None  # the CloudWatch agent's credentials
    detailed_monitoring: bool = False


@dataclass(frozen=True)
class Instance:
    instance_id: str
    state: str
    instance_type: str | None = None
    ami_id: str | None = None
    private_ip: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Ec2Fleet(Protocol):
    def launch(self, spec: LaunchSpec) -> Instance: ...
    def describe(self, instance_id: str) -> Instance: ...
    def start(self, instance_id: str) -> None: ...
    def stop(self, instance_id: str) -> None: ...
    def terminate(self, instance_id: str) -> None: ...
    def tag(self, instance_id: str, tags: dict[str, str]) -> None: ...


class BotoEc2Fleet:
    """EC2 through boto3; every AWS error surfaces as a `CloudError`."""

    def __init__(self, client: Any) -> None:
        self._ec2 = client

    def launch(self, spec: LaunchSpec) -> Instance:
        tags = [
            {"Key": "Name", "Value": spec.name},
            {"Key": OWNER_TAG, "Value": spec.owner},
            {"Key": WORKER_ID_TAG, "Value": spec.worker_id},
            {"Key": STACK_TAG, "Value": spec.stack},
        ]
        request: dict[str, Any] = {
            "ImageId": spec.ami_id,
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": spec.worker_id,  # a retried request launches no second instance
            "Monitoring": {"Enabled": spec.detailed_monitoring},
            # IMDSv2 only: a request forged through a CML lab cannot read the role's keys.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if spec.instance_profile_arn:
            request["IamInstanceProfile"] = {"Arn": spec.instance_profile_arn}
        if spec.subnet_id:
            request["SubnetId"] = spec.subnet_id
        if spec.security_group_ids:
            request["SecurityGroupIds"] = list(spec.security_group_ids)
        if spec.key_name:
            request["KeyName"] = spec.key_name
        response = self._call("run_instances", **request)
        return _instance(response["Instances"][0])

    def describe(self, instance_id: str) -> Instance:
        response = self._call("describe_instances", InstanceIds=[instance_id])
        for reservation in response.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return _instance(instance)
        raise CloudError("InvalidInstanceID.NotFound", f"instance {instance_id} does not exist")

    def start(self, instance_id: str) -> None:
        self._call("start_instances", InstanceIds=[instance_id])

    def stop(self, instance_id: str) -> None:
        self._call("stop_instances", InstanceIds=[instance_id])

    def terminate(self, instance_id: str) -> None:
        self._call("terminate_instances", InstanceIds=[instance_id])

    def tag(self, instance_id: str, tags: dict[str, str]) -> None:
        self._call(
            "create_tags",
            Resources=[instance_id],
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )

    def _call(self, operation: str, **arguments: Any) -> Any:
        try:
            return getattr(self._ec2, operation)(**arguments)
        except ClientError as error:
            details = error.response.get("Error", {})
            raise CloudError(
                str(details.get("Code", "Unknown")), str(details.get("Message", error))
            ) from error


def _instance(raw: dict[str, Any]) -> Instance:
    return Instance(
        instance_id=raw["InstanceId"],
        state=raw.get("State", {}).get("Name", "unknown"),
        instance_type=raw.get("InstanceType"),
        ami_id=raw.get("ImageId"),
        private_ip=raw.get("PrivateIpAddress"),
        tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
    )
