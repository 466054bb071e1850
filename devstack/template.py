"""From `template.yaml` to a CloudFormation template moto can create, plus what it skips.

The SAM translator turns the template into plain CloudFormation offline. Before moto sees
it, these things are rewritten, and recorded so the local runner can stand in for them:
local `CodeUri`/`ContentUri` become `s3://` URIs (as `sam package` does); every Lambda
target of an EventBridge rule becomes an SQS tap queue (moto's `put_events` fails on a
Lambda target); DynamoDB event source mappings are taken out (moto would try to run
the function in Docker and then drop the stream records); schedules and secrets are
taken out (the runner fires and creates them); so are the functions' asynchronous
invocation settings (`AWS::Lambda::EventInvokeConfig`, which moto does not model), which
the runner applies as Lambda does to what EventBridge and Scheduler invoke.

What exists only on AWS is localized too, never weakened in the template itself:

- resource types moto's CloudFormation does not model (`NOT_IN_MOTO`: Cognito, alarms,
  autoscaling) are dropped, and every `Ref`/`GetAtt`/`${...}` to one becomes a
  placeholder string, so the default (Cognito) configuration creates in moto as well;
- the VPC and subnets the stack is deployed into are parameters on AWS; moto's load
  balancer needs subnets that exist, so a small VPC with two subnets is added to the
  local template and stands for `VpcId`, `PublicSubnetIds` and `PrivateSubnetIds`;
- the other deploy-only parameters (domain, certificate, relay image) get local values
  (`LOCAL_DEFAULTS`) unless given; the certificate is an IAM server-certificate ARN,
  which moto's HTTPS listener accepts without an ACM certificate behind it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = ROOT / "template.yaml"
# Types moto 5.x CloudFormation does not model (it would warn and skip them), with what
# stands in for each locally. `tests/template` checks that every other type is modeled.
NOT_IN_MOTO = {
    "AWS::Cognito::UserPool": "the development issuer (devstack/issuer.py)",
    "AWS::Cognito::UserPoolGroup": "roles in the development issuer's tokens",
    "AWS::Cognito::UserPoolClient": "the development issuer's audience",
    "AWS::Cognito::UserPoolDomain": "the development issuer's /auth pages",
    "AWS::CloudWatch::Alarm": "nothing: moto never evaluates alarms",
    "AWS::ApplicationAutoScaling::ScalableTarget": "nothing: one local relay process",
    "AWS::ApplicationAutoScaling::ScalingPolicy": "nothing: one local relay process",
}
# Types moto skips with a warning and the runner makes through the API instead.
SKIPPED_BY_MOTO = frozenset({"AWS::SNS::Subscription", "AWS::SQS::QueuePolicy"})
# Deploy-only parameters and their local values (unless the caller gives them).
LOCAL_DEFAULTS = {
    "DomainName": "cmlfleet.localhost",
    "CertificateArn": "arn:aws:iam::123456789012:server-certificate/cmlfleet-local",
    "RelayImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cmlfleet-relay:local",
}
# Network parameters → the local VPC's resources that stand for them.
LOCAL_NETWORK = {
    "VpcId": {"Ref": "LocalVpc"},
    "PublicSubnetIds": [{"Ref": "LocalSubnetA"}, {"Ref": "LocalSubnetB"}],
    "PrivateSubnetIds": [{"Ref": "LocalSubnetA"}, {"Ref": "LocalSubnetB"}],
}
SERVERLESS_CODE = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}


@dataclass(frozen=True)
class FunctionSource:
    """Where a function's code lives on disk and which callable is its handler."""

    logical_id: str
    code_dir: Path
    handler: str


@dataclass(frozen=True)
class RuleTap:
    """An EventBridge rule whose Lambda target was replaced by an SQS tap queue."""

    rule_id: str
    queue_id: str
    function_id: str
    max_retries: int
    dead_letter_id: str | None = None


@dataclass(frozen=True)
class AsyncInvokeConfig:
    """How Lambda handles a failed asynchronous invocation of a function: retried
    `max_retries` times, then sent to `on_failure_id` (a queue), or dropped."""

    function_id: str
    max_retries: int = 2  # Lambda's default
    max_event_age_seconds: int = 21_600  # six hours, Lambda's default
    on_failure_id: str | None = None


@dataclass(frozen=True)
class StreamMapping:
    """A DynamoDB stream event source mapping the runner performs itself."""

    function_id: str
    table_id: str
    batch_size: int
    max_retries: int
    dlq_id: str | None


@dataclass(frozen=True)
class Schedule:
    """An EventBridge Scheduler schedule the runner fires itself (moto never fires any)."""

    schedule_id: str
    function_id: str
    expression: str  # rate(...) as the template (and its parameters) set it


@dataclass(frozen=True)
class Secret:
    """A Secrets Manager secret moto's CloudFormation skips; the runner creates it by name."""

    logical_id: str
    name: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class LocalTemplate:
    cloudformation: dict[str, Any]
    functions: dict[str, FunctionSource]
    artifacts: dict[str, Path]  # S3 key → directory to zip
    taps: list[RuleTap]
    streams: list[StreamMapping]
    subscriptions: list[dict[str, Any]]
    schedules: list[Schedule]
    secrets: list[Secret]
    dropped: dict[str, str]  # logical id → type, of the resources moto cannot create
    invoke_configs: dict[str, AsyncInvokeConfig]  # function id → its async settings

    def async_config(self, function_id: str) -> AsyncInvokeConfig:
        """The function's asynchronous invocation settings (Lambda's defaults if none)."""
        return self.invoke_configs.get(function_id, AsyncInvokeConfig(function_id))


class TemplateRulesError(ValueError):
    """The parameters break the template's `Rules`: CloudFormation would refuse the stack
    before creating anything (moto ignores rules, so the local stack checks them)."""


def rule_violations(cfn: dict[str, Any], parameters: dict[str, str]) -> list[str]:
    """The `AssertDescription` of every rule assertion the parameters fail."""
    values: dict[str, Any] = dict(_parameter_values(cfn, parameters))
    for name, spec in cfn.get("Parameters", {}).items():
        if spec.get("Type") == "CommaDelimitedList" and name in values:
            values[name] = values[name].split(",")  # Fn::Contains matches items, not text
    failed = []
    for rule in cfn.get("Rules", {}).values():
        condition = rule.get("RuleCondition")
        if condition is not None and not _rule_holds(condition, values):
            continue
        for assertion in rule["Assertions"]:
            if not _rule_holds(assertion["Assert"], values):
                failed.append(str(assertion.get("AssertDescription", assertion["Assert"])))
    return failed


def _rule_holds(node: Any, values: dict[str, Any]) -> bool:
    """A rule function, as CloudFormation evaluates it (parameter values are strings,
    lists for a CommaDelimitedList)."""

    def value(item: Any) -> Any:
        if isinstance(item, dict) and set(item) == {"Ref"}:
            return values.get(item["Ref"], "")
        if isinstance(item, list):
            return [value(element) for element in item]
        return str(item)

    (function, argument), *_ = node.items()
    if function == "Fn::Equals":
        return bool(value(argument[0]) == value(argument[1]))
    if function == "Fn::Not":
        return not _rule_holds(argument[0], values)
    if function == "Fn::And":
        return all(_rule_holds(item, values) for item in argument)
    if function == "Fn::Or":
        return any(_rule_holds(item, values) for item in argument)
    if function == "Fn::Contains":
        return bool(value(argument[1]) in value(argument[0]))
    raise ValueError(f"rule function not understood locally: {function}")


class _OfflinePolicyLoader:
    """samtranslator ships the managed policy map; nothing needs loading offline."""

    def load(self) -> dict[str, str]:
        return {}


def load_sam_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    return dict(yaml_parse(path.read_text()))


def transform_template(
    sam: dict[str, Any], bucket: str, parameters: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the SAM transform offline, with code directories rewritten to `s3://bucket/key`."""
    sam = copy.deepcopy(sam)
    artifacts: dict[str, Path] = {}
    for logical_id, resource in sam.get("Resources", {}).items():
        key = SERVERLESS_CODE.get(resource.get("Type", ""))
        if key and isinstance(resource["Properties"].get(key), str):
            artifacts[f"{logical_id}.zip"] = ROOT / resource["Properties"][key]
            resource["Properties"][key] = f"s3://{bucket}/{logical_id}.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    cfn = transform(sam, parameters or {}, _OfflinePolicyLoader())
    return cfn, artifacts


def function_sources(sam: dict[str, Any]) -> dict[str, FunctionSource]:
    """Each function's code directory and handler, from the SAM template."""
    sources = {}
    for logical_id, resource in sam.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            props = resource["Properties"]
            sources[logical_id] = FunctionSource(
                logical_id, ROOT / props["CodeUri"], props["Handler"]
            )
    return sources


def localize(
    path: Path = TEMPLATE_PATH,
    bucket: str = "cmlfleet-local-code",
    parameters: dict[str, str] | None = None,
    stack_name: str = "cmlfleet-local",
) -> LocalTemplate:
    """The template, transformed and rewritten for moto, with the gaps to fill."""
    sam = load_sam_template(path)
    cfn, artifacts = transform_template(sam, bucket, parameters)
    broken = rule_violations(cfn, parameters or {})
    if broken:
        raise TemplateRulesError("; ".join(broken))
    resources = cfn["Resources"]
    taps = _replace_lambda_targets(resources)
    streams = _take_out_stream_mappings(resources)
    values = _parameter_values(cfn, parameters or {})
    subscriptions = [
        resource["Properties"]
        for resource in resources.values()
        if resource.get("Type") == "AWS::SNS::Subscription"
        and _condition_holds(cfn, resource.get("Condition"), values)
    ]
    schedules = _take_out_schedules(resources, values)
    invoke_configs = _take_out_invoke_configs(resources)
    secrets = _take_out_secrets(cfn, stack_name)
    dropped = _drop_what_moto_cannot_create(cfn)
    _give_local_values(cfn, parameters or {})
    _split_list_defaults(cfn)
    _add_local_network(cfn)
    return LocalTemplate(
        cfn,
        function_sources(sam),
        artifacts,
        taps,
        streams,
        subscriptions,
        schedules,
        secrets,
        dropped,
        invoke_configs,
    )


def _drop_what_moto_cannot_create(cfn: dict[str, Any]) -> dict[str, str]:
    """Remove `NOT_IN_MOTO` resources; what referred to one gets a placeholder string."""
    resources = cfn["Resources"]
    dropped = {rid: r["Type"] for rid, r in resources.items() if r.get("Type") in NOT_IN_MOTO}
    for logical_id in dropped:
        del resources[logical_id]
    cfn["Resources"] = _replace_references(resources, dropped)
    cfn["Outputs"] = _replace_references(cfn.get("Outputs", {}), dropped)
    return dropped


def _placeholder(logical_id: str, attribute: str | None = None) -> str:
    return f"local-{logical_id}" + (f"-{attribute}" if attribute else "")


def _replace_references(node: Any, gone: dict[str, str]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in gone:
            return _placeholder(node["Ref"])
        if set(node) == {"Fn::GetAtt"}:
            target, attribute = _get_att(node["Fn::GetAtt"])
            if target in gone:
                return _placeholder(target, attribute)
        if set(node) == {"Fn::Sub"}:
            return {"Fn::Sub": _replace_in_sub(node["Fn::Sub"], gone)}
        return {key: _replace_references(value, gone) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_references(item, gone) for item in node]
    return node


def _get_att(argument: Any) -> tuple[str, str]:
    target, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
    return str(target), str(attribute)


def _replace_in_sub(argument: Any, gone: dict[str, str]) -> Any:
    text, variables = (argument, {}) if isinstance(argument, str) else argument
    for logical_id in gone:
        text = text.replace("${" + logical_id + "}", _placeholder(logical_id))
    if not variables:
        return text
    return [text, _replace_references(variables, gone)]


def _give_local_values(cfn: dict[str, Any], given: dict[str, str]) -> None:
    for name, value in LOCAL_DEFAULTS.items():
        spec = cfn.get("Parameters", {}).get(name)
        if spec is not None and name not in given:
            spec["Default"] = value


def _split_list_defaults(cfn: dict[str, Any]) -> None:
    """moto splits a CommaDelimitedList parameter's given value but not its default (a
    `Ref` to it would be one string): give the default as the list CloudFormation makes."""
    for spec in cfn.get("Parameters", {}).values():
        if spec.get("Type") == "CommaDelimitedList" and isinstance(spec.get("Default"), str):
            spec["Default"] = spec["Default"].split(",")


def _add_local_network(cfn: dict[str, Any]) -> None:
    """A VPC with two subnets stands for the network parameters (moto checks subnets)."""
    parameters = cfn.get("Parameters", {})
    used = {name: stand_in for name, stand_in in LOCAL_NETWORK.items() if name in parameters}
    if not used:
        return
    for name in used:
        del parameters[name]

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in used:
                return copy.deepcopy(used[node["Ref"]])
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(item) for item in node]
        return node

    cfn["Resources"] = replace(cfn["Resources"])
    cfn["Outputs"] = replace(cfn.get("Outputs", {}))
    cfn["Resources"] |= {
        "LocalVpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.80.0.0/16"}},
        "LocalSubnetA": _local_subnet("10.80.0.0/20", 0),
        "LocalSubnetB": _local_subnet("10.80.16.0/20", 1),
    }


def _local_subnet(cidr: str, zone: int) -> dict[str, Any]:
    return {
        "Type": "AWS::EC2::Subnet",
        "Properties": {
            "VpcId": {"Ref": "LocalVpc"},
            "CidrBlock": cidr,
            "AvailabilityZone": {"Fn::Select": [zone, {"Fn::GetAZs": ""}]},
        },
    }


def _parameter_values(cfn: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    defaults = {
        name: str(spec["Default"])
        for name, spec in cfn.get("Parameters", {}).items()
        if "Default" in spec
    }
    return defaults | given


def _condition_holds(cfn: dict[str, Any], name: str | None, parameters: dict[str, str]) -> bool:
    """Evaluate a template condition (Equals/Not/And/Or over parameters), as CloudFormation."""
    if name is None:
        return True

    def value(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return parameters.get(node["Ref"], "")
        return node

    def holds(node: Any) -> bool:
        (function, argument), *_ = node.items()
        if function == "Condition":
            return holds(cfn["Conditions"][argument])
        if function == "Fn::Equals":
            return bool(str(value(argument[0])) == str(value(argument[1])))
        if function == "Fn::Not":
            return not holds(argument[0])
        if function == "Fn::And":
            return all(holds(item) for item in argument)
        if function == "Fn::Or":
            return any(holds(item) for item in argument)
        raise ValueError(f"condition not understood locally: {node!r}")

    return holds(cfn["Conditions"][name])


def _take_out_schedules(resources: dict[str, Any], parameters: dict[str, str]) -> list[Schedule]:
    schedules: list[Schedule] = []
    for schedule_id, schedule in list(resources.items()):
        if schedule.get("Type") != "AWS::Scheduler::Schedule":
            continue
        props = schedule["Properties"]
        function_id = _lambda_id(props["Target"]["Arn"])
        expression = props["ScheduleExpression"]
        if isinstance(expression, dict) and "Ref" in expression:
            expression = parameters[expression["Ref"]]
        if function_id is not None:
            schedules.append(Schedule(schedule_id, function_id, str(expression)))
        del resources[schedule_id]
    return schedules


def _take_out_invoke_configs(resources: dict[str, Any]) -> dict[str, AsyncInvokeConfig]:
    configs: dict[str, AsyncInvokeConfig] = {}
    for config_id, resource in list(resources.items()):
        if resource.get("Type") != "AWS::Lambda::EventInvokeConfig":
            continue
        props = resource["Properties"]
        function_id = props["FunctionName"]["Ref"]
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        configs[function_id] = AsyncInvokeConfig(
            function_id,
            max_retries=int(props.get("MaximumRetryAttempts", 2)),
            max_event_age_seconds=int(props.get("MaximumEventAgeInSeconds", 21_600)),
            on_failure_id=destination["Fn::GetAtt"][0] if isinstance(destination, dict) else None,
        )
        del resources[config_id]
    return configs


def _take_out_secrets(cfn: dict[str, Any], stack_name: str) -> list[Secret]:
    """Remove the secrets and point every `Ref` to one at the name the runner creates."""
    resources = cfn["Resources"]
    secrets = [
        Secret(logical_id, f"{stack_name}/{logical_id}", resource.get("Properties", {}))
        for logical_id, resource in resources.items()
        if resource.get("Type") == "AWS::SecretsManager::Secret"
    ]
    names = {secret.logical_id: secret.name for secret in secrets}
    for secret in secrets:
        del resources[secret.logical_id]

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in names:
                return names[node["Ref"]]
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(item) for item in node]
        return node

    cfn["Resources"] = replace(resources)
    cfn["Outputs"] = replace(cfn.get("Outputs", {}))
    return secrets


def _lambda_id(arn: object) -> str | None:
    if isinstance(arn, dict) and "Fn::GetAtt" in arn:
        target, attribute = arn["Fn::GetAtt"]
        return str(target) if attribute == "Arn" else None
    return None


def _replace_lambda_targets(resources: dict[str, Any]) -> list[RuleTap]:
    taps: list[RuleTap] = []
    for rule_id, rule in list(resources.items()):
        if rule.get("Type") != "AWS::Events::Rule":
            continue
        for index, target in enumerate(rule["Properties"].get("Targets", [])):
            function_id = _lambda_id(target.get("Arn"))
            if function_id is None or resources[function_id]["Type"] != "AWS::Lambda::Function":
                continue
            queue_id = f"{rule_id}Tap{index}"
            resources[queue_id] = {
                "Type": "AWS::SQS::Queue",
                "Properties": {"VisibilityTimeout": 5},
            }
            retries = target.get("RetryPolicy", {}).get("MaximumRetryAttempts", 2)
            dead_letter = target.get("DeadLetterConfig", {}).get("Arn")
            dead_letter_id = dead_letter["Fn::GetAtt"][0] if isinstance(dead_letter, dict) else None
            target.clear()
            target.update({"Id": f"tap{index}", "Arn": {"Fn::GetAtt": [queue_id, "Arn"]}})
            taps.append(RuleTap(rule_id, queue_id, function_id, int(retries), dead_letter_id))
    return taps


def _take_out_stream_mappings(resources: dict[str, Any]) -> list[StreamMapping]:
    streams: list[StreamMapping] = []
    for mapping_id, mapping in list(resources.items()):
        if mapping.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = mapping["Properties"]
        source = props.get("EventSourceArn")
        if not (isinstance(source, dict) and "Fn::GetAtt" in source):
            continue
        table_id, attribute = source["Fn::GetAtt"]
        if attribute != "StreamArn":
            continue
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        dlq = destination["Fn::GetAtt"][0] if isinstance(destination, dict) else None
        streams.append(
            StreamMapping(
                function_id=props["FunctionName"]["Ref"],
                table_id=table_id,
                batch_size=int(props.get("BatchSize", 100)),
                max_retries=int(props.get("MaximumRetryAttempts", 3)),
                dlq_id=dlq,
            )
        )
        del resources[mapping_id]
    return streams
