"""Two stacks in one account and region, as samconfig.toml sets them up (dev beside
production): both are created, they share no physical name, and neither's roles may act
on the other's workers, queues, topic or table (iam-simulate on both stacks' policies).

moto lets two stacks share a name, so the names are compared here: those moto created,
and those of resources the local stack takes out before moto sees them (schedules).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack import iampolicies, iamsim
from devstack.iamcheck import named_policies
from devstack.iampolicies import DeployablePolicies
from devstack.stack import ACCOUNT_ID, LOCAL_PARAMETERS, LocalStack
from devstack.template import ROOT, load_sam_template, transform_template

ENVIRONMENTS = ("default", "production")
TASK = "0123456789abcdef"  # a relay task id (16 characters)
# Names scoped by something else than the account and region: a group within its user
# pool, a scaling policy within its scalable target, a record within the operator's zone.
SCOPED_NAMES = {
    ("AWS::Cognito::UserPoolGroup", "GroupName"),
    ("AWS::ApplicationAutoScaling::ScalingPolicy", "PolicyName"),
    ("AWS::Route53::RecordSet", "Name"),
}
# The properties that name a resource for the account and region (as CloudFormation
# would otherwise generate a unique name).
NAME_PROPERTIES = {
    "AWS::Scheduler::Schedule": "Name",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::InstanceProfile": "InstanceProfileName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::ECS::Cluster": "ClusterName",
    "AWS::ECS::Service": "ServiceName",
    "AWS::ECS::TaskDefinition": "Family",
    "AWS::ElasticLoadBalancingV2::LoadBalancer": "Name",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "Name",
    "AWS::EC2::SecurityGroup": "GroupName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::Cognito::UserPool": "UserPoolName",
    "AWS::Cognito::UserPoolDomain": "Domain",
    **dict(SCOPED_NAMES),
}


def deploy_settings(environment: str) -> tuple[str, dict[str, str]]:
    """The stack name and parameters `sam deploy --config-env` would use."""
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())[environment]
    overrides = config["deploy"]["parameters"]["parameter_overrides"]
    parameters = dict(re.findall(r'(\w+)="([^"]*)"', overrides))
    return str(config["global"]["parameters"]["stack_name"]), LOCAL_PARAMETERS | parameters


@dataclass
class Deployed:
    stack: LocalStack
    policies: dict[str, DeployablePolicies]
    prefix: str  # the relay queues' prefix

    def queue(self, task: str = TASK) -> str:
        return f"arn:aws:sqs:us-east-1:{ACCOUNT_ID}:{self.prefix}-{task}"

    def physical(self, logical_id: str) -> str:
        return self.stack.resources[logical_id]

    def table(self) -> str:
        return f"arn:aws:dynamodb:us-east-1:{ACCOUNT_ID}:table/{self.physical('WorkersTable')}"

    def topic(self) -> str:
        return self.physical("DomainEventsTopic")


@pytest.fixture(scope="module")
def stacks() -> Iterator[dict[str, Deployed]]:
    saved = dict(os.environ)
    first: LocalStack | None = None
    try:
        deployed = {}
        for environment in ENVIRONMENTS:
            name, parameters = deploy_settings(environment)
            stack = LocalStack(stack_name=name, parameters=parameters, call_log=None)
            if first is None:
                first = stack
                stack.start_moto()
            else:
                stack.endpoint = first.endpoint
            template = stack.create()  # raises unless CREATE_COMPLETE
            policies = iampolicies.snapshot(
                template.cloudformation, stack.resources, stack.client("iam")
            )
            deployed[environment] = Deployed(stack, policies, parameters["RelayQueuePrefix"])
        yield deployed
    finally:
        if first is not None:
            first.stop()
        os.environ.clear()
        os.environ.update(saved)


def test_both_stacks_are_created_in_one_account_and_region(stacks: dict[str, Deployed]) -> None:
    cloudformation = stacks["default"].stack.client("cloudformation")
    statuses = {
        s["StackName"]: s["StackStatus"] for s in cloudformation.describe_stacks()["Stacks"]
    }
    assert statuses == {"cml-fleet-dev": "CREATE_COMPLETE", "cml-fleet": "CREATE_COMPLETE"}


def test_the_stacks_share_no_physical_resource(stacks: dict[str, Deployed]) -> None:
    # moto leaves the physical id of what it skips (subscriptions, queue policies) empty.
    dev, production = (set(stacks[e].stack.resources.values()) - {""} for e in ENVIRONMENTS)
    assert len(dev) > 50
    assert dev & production == set()


# ---- names CloudFormation does not generate -------------------------------------------


def resolve(node: Any, stack: str, parameters: dict[str, str], cfn: dict[str, Any]) -> Any:
    """A name as CloudFormation would make it for `stack`; what another resource's Ref or
    GetAtt gives (a generated, unique id) is `<stack>/<logical id>`."""
    if isinstance(node, str | int):
        return str(node)
    if isinstance(node, list):
        return [resolve(item, stack, parameters, cfn) for item in node]
    ((function, argument),) = node.items()
    pseudo = {
        "AWS::StackName": stack,
        "AWS::StackId": f"arn:aws:cloudformation:us-east-1:{ACCOUNT_ID}:stack/{stack}/"
        f"{abs(hash(stack)):08x}-0000-4000-8000-000000000000",
        "AWS::Region": "us-east-1",
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::Partition": "aws",
    }

    def ref(name: str) -> str:
        if name in pseudo:
            return pseudo[name]
        if name in cfn.get("Parameters", {}):
            default = cfn["Parameters"][name].get("Default", "")
            return str(parameters.get(name, default))
        return f"<{stack}/{name}>"

    if function == "Ref":
        return ref(argument)
    if function == "Fn::GetAtt":
        return f"<{stack}/{argument[0]}.{argument[1]}>"
    if function == "Fn::Sub":
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {k: resolve(v, stack, parameters, cfn) for k, v in variables.items()}
        return re.sub(r"\$\{([^}]+)\}", lambda m: values.get(m.group(1)) or ref(m.group(1)), text)
    if function == "Fn::Join":
        separator, parts = argument
        return str(separator).join(resolve(parts, stack, parameters, cfn))
    if function == "Fn::Select":
        index, items = argument
        return resolve(items, stack, parameters, cfn)[int(index)]
    if function == "Fn::Split":
        separator, text = argument
        return resolve(text, stack, parameters, cfn).split(separator)
    if function == "Fn::If":
        condition, yes, no = argument
        chosen = yes if condition_holds(cfn, condition, parameters) else no
        return resolve(chosen, stack, parameters, cfn)
    raise AssertionError(f"cannot resolve {function} in a name")


def condition_holds(cfn: dict[str, Any], name: str, parameters: dict[str, str]) -> bool:
    from devstack.template import _condition_holds

    defaults = {k: str(v.get("Default", "")) for k, v in cfn["Parameters"].items()}
    return _condition_holds(cfn, name, defaults | parameters)


def names_in(environment: str) -> dict[tuple[str, str], str]:
    """(type, logical id) → the name each named resource gets in that environment."""
    stack, parameters = deploy_settings(environment)
    cfn, _ = transform_template(load_sam_template(), "bucket", parameters)
    names = {}
    for logical_id, resource in cfn["Resources"].items():
        kind = resource["Type"]
        prop = NAME_PROPERTIES.get(kind)
        if prop and prop in resource.get("Properties", {}) and (kind, prop) not in SCOPED_NAMES:
            value = resolve(resource["Properties"][prop], stack, parameters, cfn)
            names[(kind, logical_id)] = value
    return names


def test_no_resource_gets_the_same_name_in_both_stacks() -> None:
    dev, production = (names_in(e) for e in ENVIRONMENTS)
    assert dev.keys() == production.keys()
    shared = {key: dev[key] for key in dev if dev[key] == production[key]}
    assert shared == {}, f"named the same in both stacks: {shared}"
    # The schedules are among the resources moto never sees; they must not be named.
    assert not [k for k in dev if k[0] == "AWS::Scheduler::Schedule"]


# ---- neither stack's roles may act on the other's resources ---------------------------


def requests_for(own: Deployed, other: Deployed) -> list[tuple[str, iamsim.IamRequest, bool]]:
    """(what, request, allowed?) for `own`'s roles on its own and on `other`'s resources."""
    cases: list[tuple[str, iamsim.IamRequest, bool]] = []

    def ask(
        what: str, deployable: str, action: str, resource: str, allowed: bool, **ctx: Any
    ) -> None:
        role = own.policies[deployable]
        request = iamsim.IamRequest(
            id=str(len(cases)),
            role=role.role_id,
            principal=role.role_arn,
            action=action,
            resource=resource,
            account_id=ACCOUNT_ID,
            context=ctx.get("context", {}),
        )
        cases.append((what, request, allowed))

    for mine, target in ((True, own), (False, other)):
        whose = "own" if mine else "other's"
        stack_name = target.stack.stack_name
        instance = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/i-0123456789abcdef0"
        worker_tags = {
            "aws:ResourceTag/cmlfleet:stack": stack_name,
            "aws:ResourceTag/cmlfleet:worker-id": "w-1",
        }
        for action in ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"):
            ask(
                f"{action} an {whose} worker",
                "ApiFunction",
                action,
                instance,
                mine,
                context=worker_tags,
            )
        ask(
            f"import an instance of the {whose} stack",
            "ApiFunction",
            "ec2:CreateTags",
            instance,
            mine,
            context={
                "aws:ResourceTag/cmlfleet:importable": "true",
                "aws:ResourceTag/cmlfleet:stack": stack_name,
                "aws:RequestTag/cmlfleet:stack": own.stack.stack_name,
                "aws:RequestTag/cmlfleet:worker-id": "w-2",
                "aws:TagKeys": ["cmlfleet:stack", "cmlfleet:worker-id"],
            },
        )
        ask(
            f"pass the {whose} worker role",
            "ApiFunction",
            "iam:PassRole",
            f"arn:aws:iam::{ACCOUNT_ID}:role/{target.physical('WorkerInstanceRole')}",
            mine,
            context={"iam:PassedToService": "ec2.amazonaws.com"},
        )
        for action in (
            "sqs:ReceiveMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:SetQueueAttributes",
            "sqs:DeleteQueue",
        ):
            ask(f"relay {action} on an {whose} queue", "Relay", action, target.queue(), mine)
        ask(
            f"reap an {whose} queue", "QueueReaperFunction", "sqs:DeleteQueue", target.queue(), mine
        )
        ask(
            f"reaper unsubscribes from the {whose} topic",
            "QueueReaperFunction",
            "sns:Unsubscribe",
            target.topic(),
            mine,
        )
        ask(
            f"relay subscribes an {whose} queue to its topic",
            "Relay",
            "sns:Subscribe",
            own.topic(),
            mine,
            context={"sns:Protocol": "sqs", "sns:Endpoint": target.queue()},
        )
        ask(
            f"relay subscribes its queue to the {whose} topic",
            "Relay",
            "sns:Subscribe",
            target.topic(),
            mine,
            context={"sns:Protocol": "sqs", "sns:Endpoint": own.queue()},
        )
        ask(
            f"publish to the {whose} topic",
            "EventPublisherFunction",
            "sns:Publish",
            target.topic(),
            mine,
        )
        for deployable in ("ApiFunction", "InstanceStateFunction", "MetricsCollectorFunction"):
            ask(
                f"{deployable} writes the {whose} table",
                deployable,
                "dynamodb:PutItem",
                target.table(),
                mine,
                context={"dynamodb:LeadingKeys": ["WORKER"]},
            )
        ask(
            f"relay reads the {whose} event log",
            "Relay",
            "dynamodb:Query",
            target.table(),
            mine,
            context={"dynamodb:LeadingKeys": ["EVENTS#2026120110"]},
        )
    # A queue whose prefix starts with this stack's but is longer (another stack's):
    longer = f"arn:aws:sqs:us-east-1:{ACCOUNT_ID}:{own.prefix}-x-{TASK}"
    ask("relay on a queue of a longer prefix", "Relay", "sqs:DeleteQueue", longer, False)
    ask("reap a queue of a longer prefix", "QueueReaperFunction", "sqs:DeleteQueue", longer, False)
    return cases


@pytest.mark.parametrize(("own", "other"), [ENVIRONMENTS, tuple(reversed(ENVIRONMENTS))])
def test_each_stacks_roles_may_act_on_its_own_resources_and_on_none_of_the_others(
    stacks: dict[str, Deployed], own: str, other: str
) -> None:
    cases = requests_for(stacks[own], stacks[other])
    policies = {p.role_id: named_policies(p) for p in stacks[own].policies.values()}
    results = iamsim.simulate(policies, [request for _, request, _ in cases])
    wrong = []
    for (what, request, expected), result in zip(cases, results, strict=True):
        if result.errors or result.allowed != expected:
            wrong.append(
                f"{what}: expected {'allowed' if expected else 'denied'}\n"
                + iamsim.format_denial(what, request, result, policies[request.role])
            )
    assert not wrong, "\n\n".join(wrong)


# ---- what the API may launch, and where (finding L7) ----------------------------------


def launch_environment(deployed: Deployed) -> dict[str, str]:
    """The API function's settings for launches, as the stack set them."""
    name = deployed.physical("ApiFunction")
    lambda_client = deployed.stack.client("lambda")
    variables = lambda_client.get_function_configuration(FunctionName=name)["Environment"]
    return dict(variables["Variables"])


def launch_requests(own: Deployed, other: Deployed) -> list[tuple[str, iamsim.IamRequest, bool]]:
    """(what, RunInstances request, allowed?) as the API makes them, one resource each."""
    mine, theirs = launch_environment(own), launch_environment(other)
    role = own.policies["ApiFunction"]
    ec2 = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}"
    launched = {
        "aws:RequestTag/cmlfleet:stack": own.stack.stack_name,
        "aws:TagKeys": ["cmlfleet:stack"],
        "ec2:MetadataHttpTokens": "required",
    }
    (own_group,) = mine["WORKER_SECURITY_GROUP_IDS"].split(",")
    (their_group,) = theirs["WORKER_SECURITY_GROUP_IDS"].split(",")
    cases: list[tuple[str, str, dict[str, Any], bool]] = [
        ("the default type", "instance/i-0", launched | {"ec2:InstanceType": "m5zn.metal"}, True),
        ("another allowed type", "instance/i-0", launched | {"ec2:InstanceType": "c5.metal"}, True),
        ("a p5.48xlarge", "instance/i-0", launched | {"ec2:InstanceType": "p5.48xlarge"}, False),
        ("no type condition met", "instance/i-0", launched, False),
        ("into its subnet", f"subnet/{mine['WORKER_SUBNET_ID']}", {}, True),
        ("into the other's subnet", f"subnet/{theirs['WORKER_SUBNET_ID']}", {}, False),
        ("into another subnet", "subnet/subnet-0123456789abcdef0", {}, False),
        ("with its group", f"security-group/{own_group}", {"ec2:SecurityGroupID": own_group}, True),
        (
            "with the other's group",
            f"security-group/{their_group}",
            {"ec2:SecurityGroupID": their_group},
            False,
        ),
        (
            "with the VPC's default group",
            "security-group/sg-00000000",
            {"ec2:SecurityGroupID": "sg-00000000"},
            False,
        ),
    ]
    return [
        (
            f"launch {what}",
            iamsim.IamRequest(
                id=str(index),
                role=role.role_id,
                principal=role.role_arn,
                action="ec2:RunInstances",
                resource=f"{ec2}:{resource}",
                account_id=ACCOUNT_ID,
                context=context,
            ),
            allowed,
        )
        for index, (what, resource, context, allowed) in enumerate(cases)
    ]


def test_l7_the_api_role_launches_only_allowed_types_into_its_own_subnet_and_groups(
    stacks: dict[str, Deployed],
) -> None:
    own, other = (stacks[e] for e in ENVIRONMENTS)
    cases = launch_requests(own, other)
    policies = {p.role_id: named_policies(p) for p in own.policies.values()}
    results = iamsim.simulate(policies, [request for _, request, _ in cases])
    decided = {what: result.allowed for (what, _, _), result in zip(cases, results, strict=True)}
    assert all(not result.errors for result in results), [r.errors for r in results]
    assert decided == {what: expected for what, _, expected in cases}
