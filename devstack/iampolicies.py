"""The IAM policies of each deployable, as the stack created them.

Each Lambda function runs with the role its `Role` names in the SAM-transformed template,
the relay with its task definition's `TaskRoleArn`. Their inline policies are read back
from the stack's IAM roles (CloudFormation resolved every `Ref`, `GetAtt` and `Sub` in
them against the stack's real resources); AWS managed policies the roles attach are
taken from the documents moto ships (it does not attach them itself).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

RELAY = "Relay"  # the deployable name of the relay's task role


@dataclass(frozen=True)
class DeployablePolicies:
    """Who a deployable acts as, and every policy that role has."""

    deployable: str
    role_id: str  # the role's logical id in the template
    role_arn: str
    policies: tuple[tuple[str, dict[str, Any]], ...]  # (name, document)

    def as_json(self) -> dict[str, Any]:
        return {
            "deployable": self.deployable,
            "role_id": self.role_id,
            "role_arn": self.role_arn,
            "policies": [{"name": n, "document": d} for n, d in self.policies],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeployablePolicies:
        return cls(
            raw["deployable"],
            raw["role_id"],
            raw["role_arn"],
            tuple((p["name"], p["document"]) for p in raw["policies"]),
        )


def deployable_roles(cfn: Mapping[str, Any]) -> dict[str, str]:
    """Deployable (function logical id, or `Relay`) → the logical id of its role."""
    roles: dict[str, str] = {}
    for logical_id, resource in cfn["Resources"].items():
        properties = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Lambda::Function":
            roles[logical_id] = _role_id(properties["Role"])
        elif resource.get("Type") == "AWS::ECS::TaskDefinition" and "TaskRoleArn" in properties:
            roles[RELAY] = _role_id(properties["TaskRoleArn"])
    return roles


def snapshot(
    cfn: Mapping[str, Any], physical_ids: Mapping[str, str], iam: Any
) -> dict[str, DeployablePolicies]:
    """Every deployable's role and policies in a created stack."""
    found: dict[str, DeployablePolicies] = {}
    for deployable, role_id in deployable_roles(cfn).items():
        name = physical_ids[role_id].rsplit("/", 1)[-1]
        role = iam.get_role(RoleName=name)["Role"]
        policies = [
            (policy, _document(iam.get_role_policy(RoleName=name, PolicyName=policy)))
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
        ]
        for arn in cfn["Resources"][role_id]["Properties"].get("ManagedPolicyArns", []):
            managed = _managed_arn(arn)
            policies.append((managed.rsplit("/", 1)[-1], managed_policy(managed)))
        found[deployable] = DeployablePolicies(deployable, role_id, role["Arn"], tuple(policies))
    return found


def write(path: Any, policies: Mapping[str, DeployablePolicies]) -> None:
    path.write_text(json.dumps({k: v.as_json() for k, v in policies.items()}, indent=1))


def read(path: Any) -> dict[str, DeployablePolicies]:
    raw = json.loads(path.read_text())
    return {k: DeployablePolicies.from_json(v) for k, v in raw.items()}


@cache
def _aws_managed() -> dict[str, Any]:
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    parsed: dict[str, Any] = json.loads(aws_managed_policies_data)
    return parsed


def managed_policy(arn: str) -> dict[str, Any]:
    """An AWS managed policy's document (facts AWS publishes, as moto ships them)."""
    name = arn.rsplit("/", 1)[-1]
    document: dict[str, Any] = _aws_managed()[name]["Document"]
    return document


def _managed_arn(value: Any) -> str:
    if isinstance(value, dict) and "Fn::Sub" in value:
        return str(value["Fn::Sub"]).replace("${AWS::Partition}", "aws")
    return str(value)


def _role_id(value: Any) -> str:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else target.split(".")[0])
    raise ValueError(f"a role given as {value!r}: expected Fn::GetAtt of a role's Arn")


def _document(response: Mapping[str, Any]) -> dict[str, Any]:
    document = response["PolicyDocument"]
    if not isinstance(document, str):
        return dict(document)
    try:
        parsed: dict[str, Any] = json.loads(document)
    except json.JSONDecodeError:
        # moto answers a policy CloudFormation gave it as a Python literal, not JSON.
        parsed = ast.literal_eval(document)
    return parsed
