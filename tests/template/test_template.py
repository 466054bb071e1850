"""template.yaml: it lints, transforms offline, wires what the code reads, and deploys in moto.

The transform runs once per module (offline, through `devstack.template`); the assertions
read the plain CloudFormation it produces, the way CloudFormation itself would see it.
"""

from __future__ import annotations

import fnmatch
import inspect
import io
import json
import re
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.shared import constants as powertools_constants
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from moto import mock_aws

from cmlfleet.adapters.repository import INSTANCE_INDEX
from cmlfleet.identity import require_https
from cmlfleet.settings import FleetSettings
from devstack.stack import LOCAL_PARAMETERS
from devstack.template import (
    LOCAL_DEFAULTS,
    LOCAL_NETWORK,
    NOT_IN_MOTO,
    ROOT,
    SKIPPED_BY_MOTO,
    LocalTemplate,
    load_sam_template,
    localize,
    transform_template,
)
from fleet_api.settings import ApiSettings
from relay.settings import RelaySettings

BUCKET = "cmlfleet-template-tests"
STACK_NAME = "cmlfleet-template-test"
FUNCTIONS = (
    "InstanceStateFunction",
    "EventPublisherFunction",
    "ApiFunction",
    "MetricsCollectorFunction",
    "LabsRefreshFunction",
    "QueueReaperFunction",
)
# The settings class each function loads at start (its environment must satisfy it).
SETTINGS_OF: dict[str, type[FleetSettings]] = {
    "InstanceStateFunction": FleetSettings,
    "EventPublisherFunction": FleetSettings,
    "ApiFunction": ApiSettings,
    "MetricsCollectorFunction": FleetSettings,
    "LabsRefreshFunction": FleetSettings,
    "QueueReaperFunction": FleetSettings,
}
LAYERS = ("CodeLayer", "DependenciesLayer")
EC2_PATTERN = {
    "source": ["aws.ec2"],
    "detail-type": ["EC2 Instance State-change Notification"],
}
OUTBOX_FILTER = {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}
# Environment variable → the resource its value must `Ref`.
REQUIRED_REFS = {
    "TABLE_NAME": "WorkersTable",
    "IDEMPOTENCY_TABLE_NAME": "IdempotencyTable",
    "TOPIC_ARN": "DomainEventsTopic",
}
# Every POWERTOOLS_* variable Powertools itself knows; anything else is a typo.
POWERTOOLS_VARIABLES = frozenset(
    value
    for value in vars(powertools_constants).values()
    if isinstance(value, str) and value.startswith("POWERTOOLS_")
)
SCOPED_SERVICES = ("dynamodb:", "sns:", "sqs:")
EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_sam_template()


@pytest.fixture(scope="module")
def transformed(sam: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    return transform_template(sam, BUCKET)


@pytest.fixture(scope="module")
def cfn(transformed: tuple[dict[str, Any], dict[str, Path]]) -> dict[str, Any]:
    return transformed[0]


@pytest.fixture(scope="module")
def resources(cfn: dict[str, Any]) -> dict[str, Any]:
    return dict(cfn["Resources"])


@pytest.fixture(scope="module")
def localized() -> LocalTemplate:
    return localize(bucket=BUCKET)


# ---- helpers ----------------------------------------------------------------------------


def of_type(resources: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {rid: r for rid, r in resources.items() if r.get("Type") == type_name}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ref(logical_id: str) -> dict[str, str]:
    return {"Ref": logical_id}


def get_att(logical_id: str, attribute: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [logical_id, attribute]}


def points_at_function(arn: Any, function_id: str) -> bool:
    return arn in (get_att(function_id, "Arn"), ref(function_id))


def render(expression: Any) -> str:
    """A resource expression as one string, intrinsics kept as `${...}` placeholders."""
    if isinstance(expression, str):
        return expression
    if isinstance(expression, dict) and len(expression) == 1:
        (function, argument), *_ = expression.items()
        if function == "Ref":
            return "${" + str(argument) + "}"
        if function == "Fn::GetAtt":
            target, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            return "${" + f"{target}.{attribute}" + "}"
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            for name, value in variables.items():
                text = text.replace("${" + name + "}", render(value))
            return str(text)
        if function == "Fn::Join":
            separator, parts = argument
            return str(separator).join(render(part) for part in parts)
    raise AssertionError(f"resource expression not understood: {expression!r}")


def policy_statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, statement) for every permission statement in the template (not trust policies)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for rid, resource in resources.items():
        props = resource.get("Properties", {})
        documents = []
        if "PolicyDocument" in props:
            documents.append((rid, props["PolicyDocument"]))
        for policy in props.get("Policies", []) if resource["Type"] == "AWS::IAM::Role" else []:
            documents.append((f"{rid}/{policy.get('PolicyName')}", policy["PolicyDocument"]))
        for where, document in documents:
            found.extend((where, s) for s in as_list(document.get("Statement", [])))
    return found


def role_of(resources: dict[str, Any], function_id: str) -> str:
    role = resources[function_id]["Properties"]["Role"]
    assert isinstance(role, dict)
    assert "Fn::GetAtt" in role, f"{function_id} role is not one of this template's roles"
    role_id = str(role["Fn::GetAtt"][0])
    assert resources[role_id]["Type"] == "AWS::IAM::Role"
    return role_id


def role_statements(resources: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    """The inline statements of a role and of every AWS::IAM::Policy attached to it."""
    statements = []
    for policy in resources[role_id]["Properties"].get("Policies", []):
        statements.extend(as_list(policy["PolicyDocument"]["Statement"]))
    for policy in of_type(resources, "AWS::IAM::Policy").values():
        if ref(role_id) in policy["Properties"].get("Roles", []):
            statements.extend(as_list(policy["Properties"]["PolicyDocument"]["Statement"]))
    return statements


def allows(statements: list[dict[str, Any]], action: str, resources: set[str]) -> bool:
    """Whether an Allow statement grants `action` on one of the equivalent `resources`."""
    for statement in statements:
        if statement.get("Effect") != "Allow" or "Action" not in statement:
            continue
        actions = [a.lower() for a in as_list(statement["Action"])]
        if not any(fnmatch.fnmatchcase(action.lower(), pattern) for pattern in actions):
            continue
        patterns = [render(r) for r in as_list(statement.get("Resource", []))]
        if any(fnmatch.fnmatchcase(want, p) for want in resources for p in patterns):
            return True
    return False


def topic_arn_forms(topic_id: str) -> set[str]:
    return {
        "${" + topic_id + "}",  # Ref of an SNS topic is its ARN
        "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${" + topic_id + ".TopicName}",
    }


def queue_arn_forms(queue_id: str) -> set[str]:
    return {
        "${" + queue_id + ".Arn}",
        "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${" + queue_id + ".QueueName}",
    }


def matches_filter(pattern: Any, data: Any) -> bool:
    """Event filtering for the exact-value patterns the template uses (lists of literals)."""
    if isinstance(pattern, dict):
        return isinstance(data, dict) and all(
            key in data and matches_filter(sub, data[key]) for key, sub in pattern.items()
        )
    assert isinstance(pattern, list), f"unsupported filter element {pattern!r}"
    assert all(not isinstance(v, dict | list) for v in pattern), "only literal values supported"
    return data in pattern


def rules_targeting(resources: dict[str, Any], function_id: str) -> dict[str, dict[str, Any]]:
    """Rule id → its target that invokes `function_id`."""
    found = {}
    for rule_id, rule in of_type(resources, "AWS::Events::Rule").items():
        for target in rule["Properties"].get("Targets", []):
            if points_at_function(target.get("Arn"), function_id):
                found[rule_id] = target
    return found


def stream_mappings_of(resources: dict[str, Any], function_id: str) -> dict[str, dict[str, Any]]:
    return {
        mid: m["Properties"]
        for mid, m in of_type(resources, "AWS::Lambda::EventSourceMapping").items()
        if m["Properties"].get("FunctionName") in (ref(function_id), get_att(function_id, "Arn"))
    }


def layer_version_id(resources: dict[str, Any], layer_ref: Any) -> str:
    assert isinstance(layer_ref, dict)
    assert set(layer_ref) == {"Ref"}, f"layer {layer_ref!r} is not a layer of this template"
    layer_id = str(layer_ref["Ref"])
    assert resources[layer_id]["Type"] == "AWS::Lambda::LayerVersion"
    return layer_id


# ---- 1. lint ----------------------------------------------------------------------------


def test_cfn_lint_reports_no_errors() -> None:
    """cfn-lint exits 0 (no errors, warnings or informational findings)."""
    # `python -m cfnlint` has no __main__; run the console entry point's function instead.
    command = [
        sys.executable,
        "-c",
        "import sys; from cfnlint.runner import main; sys.exit(main())",
        "template.yaml",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"cfn-lint exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


# ---- 2. transform -----------------------------------------------------------------------


def test_the_sam_transform_runs_offline_and_maps_every_code_directory_to_s3(
    transformed: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    cfn, artifacts = transformed
    assert "Transform" not in cfn
    assert not of_type(cfn["Resources"], "AWS::Serverless::Function")
    assert set(artifacts) == {f"{name}.zip" for name in (*FUNCTIONS, *LAYERS)}
    for key, directory in artifacts.items():
        assert directory.is_dir(), f"{key} would be zipped from missing {directory}"


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_the_transform_yields_each_function_on_python_312_with_tracing_and_both_layers(
    resources: dict[str, Any], function_id: str
) -> None:
    function = resources[function_id]
    assert function["Type"] == "AWS::Lambda::Function"
    props = function["Properties"]
    assert props["Runtime"] == "python3.12"
    assert props["Handler"] == "app.lambda_handler"
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Code"] == {"S3Bucket": BUCKET, "S3Key": f"{function_id}.zip"}
    layer_ids = [layer_version_id(resources, layer) for layer in props["Layers"]]
    assert len(layer_ids) == len(LAYERS)
    # SAM names a LayerVersion after the SAM resource plus a content hash.
    for sam_layer in LAYERS:
        assert [lid for lid in layer_ids if lid.startswith(sam_layer)], (
            f"{function_id} does not use {sam_layer}: {layer_ids}"
        )


def test_the_functions_handlers_exist_in_their_code_directories(sam: dict[str, Any]) -> None:
    for function_id in FUNCTIONS:
        props = sam["Resources"][function_id]["Properties"]
        module, _, attribute = props["Handler"].rpartition(".")
        source = ROOT / props["CodeUri"] / f"{module}.py"
        assert source.is_file(), f"{function_id}: no {source}"
        assert f"def {attribute}(" in source.read_text()


# ---- 3. environment ---------------------------------------------------------------------


def test_fleet_settings_requires_exactly_the_table_names_and_the_topic_arn() -> None:
    required = {name for name, field in FleetSettings.model_fields.items() if field.is_required()}
    assert required == {"table_name", "idempotency_table_name", "topic_arn"}
    assert {name.upper() for name in required} == set(REQUIRED_REFS)


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_every_required_setting_is_set_on_each_function_from_the_right_resource(
    resources: dict[str, Any], function_id: str
) -> None:
    variables = resources[function_id]["Properties"]["Environment"]["Variables"]
    required = {
        name.upper() for name, field in FleetSettings.model_fields.items() if field.is_required()
    }
    missing = required - set(variables)
    assert not missing, f"{function_id} lacks {sorted(missing)}"
    for name, target in REQUIRED_REFS.items():
        assert variables[name] == ref(target), f"{function_id}: {name}={variables[name]!r}"


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_every_variable_set_on_each_function_is_one_the_code_reads(
    resources: dict[str, Any], function_id: str
) -> None:
    variables = resources[function_id]["Properties"]["Environment"]["Variables"]
    settings = {name.upper() for name in SETTINGS_OF[function_id].model_fields}
    unknown = sorted(set(variables) - settings - POWERTOOLS_VARIABLES)
    assert not unknown, f"{function_id} sets variables nothing reads: {unknown}"
    assert variables.get("POWERTOOLS_SERVICE_NAME"), f"{function_id} names no service"


# ---- 4. EventBridge ---------------------------------------------------------------------


def test_the_ec2_rule_matches_exactly_state_changes_and_retries_into_a_dead_letter_queue(
    resources: dict[str, Any],
) -> None:
    rules = rules_targeting(resources, "InstanceStateFunction")
    assert len(rules) == 1, f"expected one rule for InstanceStateFunction, got {sorted(rules)}"
    (rule_id, target), *_ = rules.items()
    props = resources[rule_id]["Properties"]
    assert props["EventPattern"] == EC2_PATTERN
    assert props.get("State", "ENABLED") == "ENABLED"
    assert "EventBusName" not in props  # AWS service events arrive on the default bus
    retry = target["RetryPolicy"]
    assert 0 <= retry["MaximumRetryAttempts"] <= 185
    assert 60 <= retry.get("MaximumEventAgeInSeconds", 86_400) <= 86_400
    assert target["DeadLetterConfig"] == {"Arn": get_att("InstanceStateDeadLetterQueue", "Arn")}


def test_the_ec2_rule_pattern_matches_the_sample_notifications(resources: dict[str, Any]) -> None:
    (rule_id, _), *_ = rules_targeting(resources, "InstanceStateFunction").items()
    pattern = resources[rule_id]["Properties"]["EventPattern"]
    for path in sorted(EVENTS_DIR.glob("ec2_state_change_*.json")):
        assert matches_filter(pattern, json.loads(path.read_text())), path.name
    assert not matches_filter(pattern, {"source": "aws.ec2", "detail-type": "AWS API Call"})


def test_eventbridge_may_invoke_the_instance_state_function_for_that_rule(
    resources: dict[str, Any],
) -> None:
    (rule_id, _), *_ = rules_targeting(resources, "InstanceStateFunction").items()
    permissions = [
        p["Properties"]
        for p in of_type(resources, "AWS::Lambda::Permission").values()
        if points_at_function(p["Properties"]["FunctionName"], "InstanceStateFunction")
    ]
    assert any(
        p["Action"] == "lambda:InvokeFunction"
        and p["Principal"] == "events.amazonaws.com"
        and p.get("SourceArn") == get_att(rule_id, "Arn")
        for p in permissions
    ), permissions


def test_eventbridge_may_send_to_the_instance_state_dead_letter_queue(
    resources: dict[str, Any],
) -> None:
    queue_ref = ref("InstanceStateDeadLetterQueue")
    policies = [
        p["Properties"]["PolicyDocument"]
        for p in of_type(resources, "AWS::SQS::QueuePolicy").values()
        if queue_ref in p["Properties"]["Queues"]
    ]
    assert any(
        s.get("Effect") == "Allow"
        and s.get("Principal") == {"Service": "events.amazonaws.com"}
        and "sqs:SendMessage" in as_list(s.get("Action"))
        and render(s.get("Resource")) == "${InstanceStateDeadLetterQueue.Arn}"
        for policy in policies
        for s in as_list(policy["Statement"])
    ), policies


# ---- 5. DynamoDB stream -----------------------------------------------------------------


@pytest.fixture(scope="module")
def outbox_mapping(resources: dict[str, Any]) -> dict[str, Any]:
    mappings = stream_mappings_of(resources, "EventPublisherFunction")
    assert len(mappings) == 1, f"expected one mapping for EventPublisherFunction: {mappings}"
    (properties,) = mappings.values()
    return properties


def test_the_publisher_reads_the_workers_table_stream_and_reports_partial_failures(
    outbox_mapping: dict[str, Any],
) -> None:
    assert outbox_mapping["EventSourceArn"] == get_att("WorkersTable", "StreamArn")
    assert outbox_mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert outbox_mapping["BisectBatchOnFunctionError"] is True
    retries = outbox_mapping["MaximumRetryAttempts"]
    assert isinstance(retries, int)
    assert 0 <= retries <= 10_000, "-1 (the default) retries a poison record until it expires"
    assert outbox_mapping["DestinationConfig"]["OnFailure"]["Destination"] == get_att(
        "PublisherDeadLetterQueue", "Arn"
    )


def test_the_publisher_filter_only_passes_inserted_event_items(
    outbox_mapping: dict[str, Any],
) -> None:
    filters = outbox_mapping["FilterCriteria"]["Filters"]
    assert len(filters) == 1, "filters are ORed: a second one could let other items through"
    pattern = json.loads(filters[0]["Pattern"])
    assert pattern == OUTBOX_FILTER
    records = json.loads((EVENTS_DIR / "dynamodb_stream_outbox_insert.json").read_text())
    passed = [matches_filter(pattern, r) for r in records["Records"]]
    assert passed == [True, False]  # the event item passes; the worker item does not
    event_record = records["Records"][0]
    for event_name in ("MODIFY", "REMOVE"):
        assert not matches_filter(pattern, {**event_record, "eventName": event_name})


# ---- 6. tables --------------------------------------------------------------------------


def test_the_workers_table_has_the_keys_stream_ttl_and_index_the_code_uses(
    resources: dict[str, Any],
) -> None:
    table = resources["WorkersTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    props = table["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["StreamSpecification"]["StreamViewType"] in {"NEW_IMAGE", "NEW_AND_OLD_IMAGES"}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    indexes = {index["IndexName"]: index for index in props["GlobalSecondaryIndexes"]}
    assert INSTANCE_INDEX == "ByInstanceId"
    assert INSTANCE_INDEX in indexes
    assert indexes[INSTANCE_INDEX]["KeySchema"] == [
        {"AttributeName": "instance_id", "KeyType": "HASH"}
    ]
    definitions = props["AttributeDefinitions"]
    attribute_types = {a["AttributeName"]: a["AttributeType"] for a in definitions}
    assert attribute_types == {"pk": "S", "sk": "S", "instance_id": "S"}


def test_the_idempotency_table_matches_the_powertools_persistence_layer(
    resources: dict[str, Any],
) -> None:
    props = resources["IdempotencyTable"]["Properties"]
    defaults = inspect.signature(DynamoDBPersistenceLayer.__init__).parameters
    key, expiry = defaults["key_attr"].default, defaults["expiry_attr"].default
    assert (key, expiry) == ("id", "expiration")
    assert props["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": key, "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": expiry, "Enabled": True}


# ---- 7. IAM -----------------------------------------------------------------------------


def test_no_policy_statement_grants_every_action_of_a_service(resources: dict[str, Any]) -> None:
    statements = policy_statements(resources)
    assert statements, "no policy statements found: the collector is broken"
    offending = []
    for where, statement in statements:
        if statement.get("Effect") == "Allow" and ("NotAction" in statement):
            offending.append((where, statement))
        for action in as_list(statement.get("Action", [])):
            if action == "*" or str(action).endswith(":*"):
                offending.append((where, statement))
    assert not offending, offending


def test_no_data_plane_statement_applies_to_every_resource(resources: dict[str, Any]) -> None:
    offending = []
    for where, statement in policy_statements(resources):
        actions = [str(a).lower() for a in as_list(statement.get("Action", []))]
        if not any(a.startswith(SCOPED_SERVICES) for a in actions):
            continue
        if actions == ["sqs:listqueues"]:
            continue  # ListQueues has no resource-level permissions: "*" is the only form
        if "NotResource" in statement or "*" in as_list(statement.get("Resource", [])):
            offending.append((where, statement))
    assert not offending, offending


@pytest.mark.parametrize("action", ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:Query"])
def test_the_instance_state_role_may_use_the_workers_table_and_its_instance_index(
    resources: dict[str, Any], action: str
) -> None:
    statements = role_statements(resources, role_of(resources, "InstanceStateFunction"))
    table = "${WorkersTable.Arn}"
    assert allows(statements, action, {table}), f"{action} on WorkersTable"
    if action == "dynamodb:Query":
        index = f"{table}/index/{INSTANCE_INDEX}"
        assert allows(statements, action, {index}), f"{action} on {INSTANCE_INDEX}"


@pytest.mark.parametrize(
    "action", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
)
def test_the_instance_state_role_may_keep_idempotency_records(
    resources: dict[str, Any], action: str
) -> None:
    statements = role_statements(resources, role_of(resources, "InstanceStateFunction"))
    assert allows(statements, action, {"${IdempotencyTable.Arn}"})


def test_the_event_publisher_role_may_publish_to_the_topic_and_its_dead_letter_queue(
    resources: dict[str, Any],
) -> None:
    role_id = role_of(resources, "EventPublisherFunction")
    statements = role_statements(resources, role_id)
    assert allows(statements, "sns:Publish", topic_arn_forms("DomainEventsTopic"))
    # The stream mapping's on-failure destination is written with the function's role.
    assert allows(statements, "sqs:SendMessage", queue_arn_forms("PublisherDeadLetterQueue"))
    managed = [str(arn) for arn in resources[role_id]["Properties"].get("ManagedPolicyArns", [])]
    reads_stream = any(arn.endswith("/AWSLambdaDynamoDBExecutionRole") for arn in managed)
    assert reads_stream or allows(statements, "dynamodb:GetRecords", {"${WorkersTable.StreamArn}"})


def test_the_instance_state_role_cannot_publish_or_read_other_tables(
    resources: dict[str, Any],
) -> None:
    statements = role_statements(resources, role_of(resources, "InstanceStateFunction"))
    assert not allows(statements, "sns:Publish", topic_arn_forms("DomainEventsTopic"))
    assert not allows(statements, "dynamodb:Scan", {"${WorkersTable.Arn}"})


# ---- 8. outputs -------------------------------------------------------------------------


def test_the_outputs_name_the_table_the_topic_and_the_relay_dead_letter_queue(
    cfn: dict[str, Any],
) -> None:
    outputs = {name: output["Value"] for name, output in cfn["Outputs"].items()}
    assert outputs["WorkersTableName"] == ref("WorkersTable")
    assert outputs["DomainEventsTopicArn"] == ref("DomainEventsTopic")
    assert outputs["RelayDeadLetterQueueArn"] == get_att("RelayDeadLetterQueue", "Arn")


# ---- 9. localize ------------------------------------------------------------------------


def test_localize_leaves_no_rule_target_pointing_at_a_function(localized: LocalTemplate) -> None:
    resources = localized.cloudformation["Resources"]
    functions = set(of_type(resources, "AWS::Lambda::Function"))
    rules = of_type(resources, "AWS::Events::Rule")
    assert rules
    for rule_id, rule in rules.items():
        for target in rule["Properties"]["Targets"]:
            arn = target["Arn"]
            assert not any(points_at_function(arn, f) for f in functions), (rule_id, target)
            queue_id = arn["Fn::GetAtt"][0]
            assert arn == get_att(queue_id, "Arn")
            assert resources[queue_id]["Type"] == "AWS::SQS::Queue"


def test_localize_records_a_tap_for_the_instance_state_rule_with_its_retries(
    resources: dict[str, Any], localized: LocalTemplate
) -> None:
    (rule_id, target), *_ = rules_targeting(resources, "InstanceStateFunction").items()
    taps = [tap for tap in localized.taps if tap.function_id == "InstanceStateFunction"]
    assert len(taps) == 1, localized.taps
    (tap,) = taps
    assert tap.rule_id == rule_id
    assert tap.max_retries == target["RetryPolicy"]["MaximumRetryAttempts"]
    local_targets = localized.cloudformation["Resources"][rule_id]["Properties"]["Targets"]
    assert [t["Arn"] for t in local_targets] == [get_att(tap.queue_id, "Arn")]


def test_localize_takes_out_the_stream_mapping_and_records_it(
    outbox_mapping: dict[str, Any], localized: LocalTemplate
) -> None:
    local_resources = localized.cloudformation["Resources"]
    assert not of_type(local_resources, "AWS::Lambda::EventSourceMapping")
    mappings = [m for m in localized.streams if m.function_id == "EventPublisherFunction"]
    assert len(mappings) == 1, localized.streams
    (mapping,) = mappings
    assert mapping.table_id == "WorkersTable"
    assert mapping.batch_size == outbox_mapping["BatchSize"]
    assert mapping.max_retries == outbox_mapping["MaximumRetryAttempts"]
    assert mapping.dlq_id == "PublisherDeadLetterQueue"


# ---- 10. moto ---------------------------------------------------------------------------


def _small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    return buffer.getvalue()


def _wait_for_stack(
    cloudformation: Any, stack_name: str, deadline_seconds: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_seconds
    while True:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        assert time.monotonic() < deadline, f"stack still {stack['StackStatus']}"
        time.sleep(0.1)


def _create_in_moto(
    localized: LocalTemplate, parameters: dict[str, str], stack_name: str = STACK_NAME
) -> dict[str, Any]:
    """Create the localized stack in the active moto: its final description and physical ids."""
    s3 = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    for key in localized.artifacts:
        s3.put_object(Bucket=BUCKET, Key=key, Body=_small_zip())
    cloudformation = boto3.client("cloudformation")
    with warnings.catch_warnings():
        # moto skips AWS::SQS::QueuePolicy and says so (when it parses the template for
        # any stack call); that is no template error.
        warnings.filterwarnings("ignore", message="Tried to parse AWS::", category=UserWarning)
        cloudformation.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(localized.cloudformation),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
        stack = _wait_for_stack(cloudformation, stack_name)
        pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=stack_name)
        physical = {
            summary["LogicalResourceId"]: summary["PhysicalResourceId"]
            for page in pages
            for summary in page["StackResourceSummaries"]
        }
    return {"stack": stack, "physical": physical}


@pytest.fixture(scope="module")
def deployed(localized: LocalTemplate) -> Iterator[dict[str, Any]]:
    """The localized stack created in moto (as the local stack creates it)."""
    with mock_aws():
        yield _create_in_moto(localized, LOCAL_PARAMETERS)


def test_the_localized_template_creates_a_stack_in_moto(deployed: dict[str, Any]) -> None:
    stack = deployed["stack"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    assert outputs["WorkersTableName"] == deployed["physical"]["WorkersTable"]
    assert outputs["DomainEventsTopicArn"].startswith("arn:aws:sns:")
    assert outputs["RelayDeadLetterQueueArn"].startswith("arn:aws:sqs:")


def test_the_workers_table_in_moto_has_a_stream_for_the_local_poller(
    deployed: dict[str, Any],
) -> None:
    table = boto3.client("dynamodb").describe_table(TableName=deployed["physical"]["WorkersTable"])[
        "Table"
    ]
    assert table.get("LatestStreamArn")
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == [INSTANCE_INDEX]


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_each_function_in_moto_has_its_environment_resolved(
    deployed: dict[str, Any], function_id: str
) -> None:
    physical = deployed["physical"]
    configuration = boto3.client("lambda").get_function_configuration(
        FunctionName=physical[function_id]
    )
    assert configuration["Runtime"] == "python3.12"
    assert configuration["Handler"] == "app.lambda_handler"
    variables = configuration["Environment"]["Variables"]
    assert variables["TABLE_NAME"] == physical["WorkersTable"]
    assert variables["IDEMPOTENCY_TABLE_NAME"] == physical["IdempotencyTable"]
    assert variables["TOPIC_ARN"] == physical["DomainEventsTopic"]
    # What the function would load at start validates: names long enough, an SNS ARN.
    settings_class = SETTINGS_OF[function_id]
    settings = settings_class(
        **{
            name.lower(): str(value)
            for name, value in variables.items()
            if name.lower() in settings_class.model_fields
        }
    )
    assert settings.table_name == physical["WorkersTable"]
    assert settings.event_ttl_days == 7


# ---- schedules and the CML credentials --------------------------------------------------


@pytest.mark.parametrize(
    ("function_id", "default"),
    [("MetricsCollectorFunction", "rate(1 minute)"), ("LabsRefreshFunction", "rate(5 minutes)")],
)
def test_each_collector_runs_on_an_eventbridge_scheduler_schedule_with_a_dead_letter_queue(
    cfn: dict[str, Any], resources: dict[str, Any], function_id: str, default: str
) -> None:
    schedules = [
        r["Properties"]
        for r in of_type(resources, "AWS::Scheduler::Schedule").values()
        if points_at_function(r["Properties"]["Target"]["Arn"], function_id)
    ]
    assert len(schedules) == 1
    (schedule,) = schedules
    parameter = schedule["ScheduleExpression"]["Ref"]
    assert cfn["Parameters"][parameter]["Default"] == default
    target = schedule["Target"]
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert target["DeadLetterConfig"]["Arn"] == get_att("ScheduleDeadLetterQueue", "Arn")


def test_localize_records_every_schedule_with_its_rate(localized: LocalTemplate) -> None:
    assert {(s.function_id, s.expression) for s in localized.schedules} == {
        ("MetricsCollectorFunction", "rate(1 minute)"),
        ("LabsRefreshFunction", "rate(5 minutes)"),
        ("QueueReaperFunction", "rate(5 minutes)"),
    }
    types = {r["Type"] for r in localized.cloudformation["Resources"].values()}
    assert "AWS::Scheduler::Schedule" not in types


def test_the_cml_credentials_are_a_generated_secret_only_the_cml_callers_may_read(
    resources: dict[str, Any],
) -> None:
    secret = resources["CmlCredentialsSecret"]["Properties"]["GenerateSecretString"]
    assert secret["GenerateStringKey"] == "password"
    readers = set()
    for function_id in FUNCTIONS:
        statements = role_statements(resources, role_of(resources, function_id))
        for statement in statements:
            if "secretsmanager:GetSecretValue" in as_list(statement["Action"]):
                per_worker, shared = if_branches(statement["Resource"], "HasPerWorkerCmlSecrets")
                assert shared == ref("CmlCredentialsSecret")
                assert per_worker == PER_WORKER_SECRETS
                readers.add(function_id)
    assert readers == {"ApiFunction", "MetricsCollectorFunction", "LabsRefreshFunction"}


# The secrets named CmlCredentialsSecretName, {worker_id} as * (and the 6 random characters
# Secrets Manager appends to a name).
PER_WORKER_SECRETS = {
    "Fn::Sub": [
        "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${Name}-??????",
        {
            "Name": {
                "Fn::Join": ["*", {"Fn::Split": ["{worker_id}", ref("CmlCredentialsSecretName")]}]
            }
        },
    ]
}


@pytest.mark.parametrize("function_id", ["ApiFunction", "MetricsCollectorFunction"])
def test_m3_the_cml_credentials_may_be_one_secret_per_worker_and_tls_is_verified_by_default(
    cfn: dict[str, Any], resources: dict[str, Any], function_id: str
) -> None:
    parameters = cfn["Parameters"]
    assert parameters["CmlVerifyTls"]["Default"] == "true"
    assert parameters["CmlCaBundle"]["Default"] == ""
    pattern = re.compile(parameters["CmlCredentialsSecretName"]["AllowedPattern"])
    assert pattern.match("")
    assert pattern.match("cml-fleet/cml/{worker_id}")
    assert not pattern.match("cml-fleet/cml/shared")  # one name for all: the generated one
    variables = resources[function_id]["Properties"]["Environment"]["Variables"]
    per_worker, shared = if_branches(variables["CML_CREDENTIALS_SECRET"], "HasPerWorkerCmlSecrets")
    assert (per_worker, shared) == (ref("CmlCredentialsSecretName"), ref("CmlCredentialsSecret"))
    assert variables["CML_VERIFY_TLS"] == ref("CmlVerifyTls")
    assert variables["CML_CA_BUNDLE"] == ref("CmlCaBundle")


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("cml-fleet/cml/{worker_id}", True),
        ("cml/{worker_id}/login", True),
        ("{worker_id}", False),  # the IAM resource would be secret:*-??????, every secret
        ("{worker_id}/cml", False),
        ("cml-{worker_id}", False),  # every secret whose name starts cml-
        ("/{worker_id}", False),
        ("cml/{worker_id}{worker_id}", False),
    ],
)
def test_m3_a_per_worker_secret_name_has_a_fixed_prefix_ending_in_a_slash_as_the_code_checks(
    cfn: dict[str, Any], name: str, allowed: bool
) -> None:
    """{worker_id} becomes * in the IAM resource: only a fixed folder before it keeps the
    functions from reading every secret; the settings refuse what the parameter refuses."""
    pattern = re.compile(cfn["Parameters"]["CmlCredentialsSecretName"]["AllowedPattern"])
    assert bool(pattern.match(name)) is allowed
    required = {"table_name": "workers", "idempotency_table_name": "idem"}
    topic = "arn:aws:sns:us-east-1:123456789012:events"
    try:
        FleetSettings(**required, topic_arn=topic, cml_credentials_secret=name)
    except ValueError:
        accepted = False
    else:
        accepted = True
    assert accepted is allowed


# ---- 11. identity -----------------------------------------------------------------------

COGNITO_HOST = "${UserPoolDomain}.auth.${AWS::Region}.amazoncognito.com"
COGNITO_ISSUER = "https://cognito-idp.${AWS::Region}.amazonaws.com/${UserPool}"


@pytest.mark.parametrize("parameter", ["OidcIssuer", "OidcJwksUrl"])
@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbC", True),
        ("https://idp.corp/realms/fleet/protocol/openid-connect/certs", True),
        ("http://127.0.0.1:9000/auth", True),  # the local stack's issuer
        ("http://localhost:8080/realms/fleet", True),
        ("http://localhost", True),
        ("http://idp.corp", False),  # keys over plain http from another machine
        ("http://idp.corp/auth", False),
        ("http://localhost@idp.corp/auth", False),  # the host is idp.corp
        ("http://127.0.0.1.idp.corp/auth", False),
        ("http://127.0.0.1:9000@idp.corp/auth", False),
        ("https://", False),
        ("https://:443/keys", False),
        ("ftp://idp.corp", False),
        ("idp.corp", False),
    ],
)
def test_l6_the_issuer_parameters_refuse_the_urls_the_code_refuses(
    cfn: dict[str, Any], parameter: str, url: str, allowed: bool
) -> None:
    """https, or http on this machine only: a stack never deploys with settings that fail."""
    pattern = re.compile(cfn["Parameters"][parameter]["AllowedPattern"])
    assert bool(pattern.match(url)) is allowed
    try:
        require_https(url, parameter)
    except ValueError:
        accepted = False
    else:
        accepted = True
    assert accepted is allowed
    assert pattern.match("")  # empty: Cognito, or the issuer's default JWKS URL


def test_l6_the_local_stacks_issuer_passes_the_issuer_pattern(cfn: dict[str, Any]) -> None:
    pattern = re.compile(cfn["Parameters"]["OidcIssuer"]["AllowedPattern"])
    assert pattern.match(LOCAL_PARAMETERS["OidcIssuer"])
    assert pattern.match("http://127.0.0.1:54321/auth")  # as FleetStack builds it, any port


def if_branches(value: Any, condition: str) -> tuple[Any, Any]:
    """The (true, false) branches of `Fn::If` on `condition`."""
    assert isinstance(value, dict), value
    assert set(value) == {"Fn::If"}, value
    name, when_true, when_false = value["Fn::If"]
    assert name == condition, value
    return when_true, when_false


def test_an_empty_oidc_issuer_means_this_stacks_cognito_user_pool(cfn: dict[str, Any]) -> None:
    assert cfn["Parameters"]["OidcIssuer"]["Default"] == ""
    assert cfn["Conditions"]["UseCognito"] == {"Fn::Equals": [ref("OidcIssuer"), ""]}
    cognito = {
        rid: r for rid, r in cfn["Resources"].items() if r["Type"].startswith("AWS::Cognito::")
    }
    assert cognito
    assert {r.get("Condition") for r in cognito.values()} == {"UseCognito"}


def test_the_user_pool_has_the_three_role_groups(resources: dict[str, Any]) -> None:
    groups = of_type(resources, "AWS::Cognito::UserPoolGroup")
    assert {g["Properties"]["GroupName"] for g in groups.values()} == {"admin", "manager", "user"}
    assert all(g["Properties"]["UserPoolId"] == ref("UserPool") for g in groups.values())
    pool = resources["UserPool"]["Properties"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    # Owners are user names (cognito:username): they must not be the opaque sub.
    assert "UsernameAttributes" not in pool


def test_the_dashboard_client_is_public_with_the_code_flow_back_to_the_dashboard(
    resources: dict[str, Any],
) -> None:
    client = resources["DashboardClient"]["Properties"]
    assert client["GenerateSecret"] is False
    assert client["AllowedOAuthFlows"] == ["code"]
    assert client["AllowedOAuthFlowsUserPoolClient"] is True
    assert "openid" in client["AllowedOAuthScopes"]
    dashboard = ["https://${DomainName}/"]
    assert [render(u) for u in client["CallbackURLs"]] == dashboard
    assert [render(u) for u in client["LogoutURLs"]] == dashboard


def test_the_api_accepts_tokens_of_the_pool_for_the_dashboard_client_or_the_external_issuer(
    resources: dict[str, Any],
) -> None:
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    cognito, external = if_branches(variables["OIDC_ISSUER"], "UseCognito")
    assert (render(cognito), external) == (COGNITO_ISSUER, ref("OidcIssuer"))
    cognito, external = if_branches(variables["OIDC_AUDIENCE"], "UseCognito")
    assert (cognito, external) == (ref("DashboardClient"), ref("OidcAudience"))


def test_the_api_names_owners_by_the_claim_the_stack_is_given(
    cfn: dict[str, Any], resources: dict[str, Any]
) -> None:
    """L6: one claim names the caller, Cognito's user name unless the stack says otherwise."""
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["OWNER_CLAIM"] == ref("OwnerClaim")
    assert cfn["Parameters"]["OwnerClaim"]["Default"] == "cognito:username"
    assert ApiSettings.model_fields["owner_claim"].default == "cognito:username"


# ---- 12. the relay task -----------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_container(resources: dict[str, Any]) -> dict[str, Any]:
    (container,) = resources["RelayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return dict(container)


@pytest.fixture(scope="module")
def relay_environment(relay_container: dict[str, Any]) -> dict[str, Any]:
    return {item["Name"]: item["Value"] for item in relay_container["Environment"]}


def test_the_relay_task_sets_every_required_relay_setting_and_nothing_it_does_not_read(
    relay_environment: dict[str, Any],
) -> None:
    fields = RelaySettings.model_fields
    required = {name.upper() for name, field in fields.items() if field.is_required()}
    assert required <= set(relay_environment)
    unknown = set(relay_environment) - {name.upper() for name in fields}
    assert not unknown, f"the relay task sets variables the relay does not read: {unknown}"


def test_the_relay_task_is_wired_to_the_topic_the_event_log_and_its_dead_letter_queue(
    relay_environment: dict[str, Any], resources: dict[str, Any]
) -> None:
    assert relay_environment["TOPIC_ARN"] == ref("DomainEventsTopic")
    assert relay_environment["TABLE_NAME"] == ref("WorkersTable")
    assert relay_environment["RELAY_DLQ_ARN"] == get_att("RelayDeadLetterQueue", "Arn")
    reaper = resources["QueueReaperFunction"]["Properties"]["Environment"]["Variables"]
    assert relay_environment["RELAY_QUEUE_PREFIX"] == reaper["RELAY_QUEUE_PREFIX"]
    assert relay_environment["HEARTBEAT_SECONDS"] == "30"
    assert relay_environment["ROLES_CLAIM"] == ref("RolesClaim")


def test_the_relay_task_tells_the_dashboard_how_to_sign_in_with_cognito(
    relay_environment: dict[str, Any],
) -> None:
    assert relay_environment["DASHBOARD_SIGN_IN"] == "oidc"
    expected = {
        "OIDC_ISSUER": (COGNITO_ISSUER, ref("OidcIssuer")),
        "OIDC_AUDIENCE": ("${DashboardClient}", ref("OidcAudience")),
        "OIDC_CLIENT_ID": ("${DashboardClient}", ref("OidcAudience")),
        "OIDC_AUTHORIZE_URL": (f"https://{COGNITO_HOST}/oauth2/authorize", ref("OidcAuthorizeUrl")),
        "OIDC_TOKEN_URL": (f"https://{COGNITO_HOST}/oauth2/token", ref("OidcTokenUrl")),
        "OIDC_LOGOUT_URL": (f"https://{COGNITO_HOST}/logout", ref("OidcLogoutUrl")),
    }
    for name, (cognito, external) in expected.items():
        when_cognito, otherwise = if_branches(relay_environment[name], "UseCognito")
        assert (render(when_cognito), otherwise) == (cognito, external), name


def test_the_relay_container_listens_where_the_target_group_and_the_service_send(
    resources: dict[str, Any], relay_container: dict[str, Any]
) -> None:
    port = RelaySettings.model_fields["relay_port"].default
    assert relay_container["PortMappings"] == [{"ContainerPort": port, "Protocol": "tcp"}]
    assert resources["RelayTargetGroup"]["Properties"]["Port"] == port
    service = resources["RelayService"]["Properties"]
    assert service["LoadBalancers"] == [
        {
            "ContainerName": relay_container["Name"],
            "ContainerPort": port,
            "TargetGroupArn": ref("RelayTargetGroup"),
        }
    ]
    assert service["LaunchType"] == "FARGATE"
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert network["Subnets"] == ref("PrivateSubnetIds")
    assert relay_container["LogConfiguration"]["Options"]["awslogs-group"] == ref("RelayLogGroup")


def relay_shutdown_seconds(environment: dict[str, Any]) -> float:
    """The longest a relay takes from SIGTERM to exit, as `relay/__main__.py` configures it."""
    defaults = RelaySettings.model_fields
    shutdown_max_ms = int(
        environment.get("RELAY_SHUTDOWN_MAX_MS", defaults["relay_shutdown_max_ms"].default)
    )
    poll_wait = int(
        environment.get("RELAY_POLL_WAIT_SECONDS", defaults["relay_poll_wait_seconds"].default)
    )
    uvicorn_grace = int(shutdown_max_ms / 1000) + 5  # timeout_graceful_shutdown
    cleanup = 5  # unsubscribe and delete the queue
    return uvicorn_grace + poll_wait + cleanup  # the poller's last long poll ends first


def test_the_stop_timeout_outlasts_the_relays_shutdown_within_fargates_limit(
    relay_container: dict[str, Any], relay_environment: dict[str, Any]
) -> None:
    assert (
        "timeout_graceful_shutdown=int(settings.relay_shutdown_max_ms / 1000) + 5"
        in (ROOT / "relay_service" / "relay" / "__main__.py").read_text()
    ), "relay_shutdown_seconds no longer mirrors the relay"
    stop_timeout = relay_container["StopTimeout"]
    assert relay_shutdown_seconds(relay_environment) < stop_timeout <= 120


def test_the_deregistration_delay_lets_requests_finish_without_holding_a_deployment(
    resources: dict[str, Any],
) -> None:
    target_group = resources["RelayTargetGroup"]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in target_group["TargetGroupAttributes"]}
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    # Ordinary requests end within the relay's send timeout; streams never end by
    # themselves, so they are ended by the relay's own shutdown after the delay.
    assert RelaySettings.model_fields["relay_send_timeout_seconds"].default <= delay <= 60
    assert target_group["HealthCheckPath"] == "/api/events/health"


def test_the_load_balancer_idle_timeout_exceeds_the_heartbeat(
    resources: dict[str, Any], relay_environment: dict[str, Any]
) -> None:
    attributes = {
        a["Key"]: a["Value"]
        for a in resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
    }
    heartbeat = float(relay_environment["HEARTBEAT_SECONDS"])
    assert heartbeat == RelaySettings.model_fields["heartbeat_seconds"].default
    assert int(attributes["idle_timeout.timeout_seconds"]) > heartbeat
    # And the relay keeps idle keep-alive connections open longer than the balancer does,
    # so the balancer never sends a request on a connection the relay is closing (a 502).
    keep_alive = int(
        relay_environment.get(
            "RELAY_KEEP_ALIVE_SECONDS",
            RelaySettings.model_fields["relay_keep_alive_seconds"].default,
        )
    )
    assert keep_alive > int(attributes["idle_timeout.timeout_seconds"])


def test_relay_tasks_scale_between_the_desired_and_the_maximum_count(
    resources: dict[str, Any],
) -> None:
    target = resources["RelayScalableTarget"]["Properties"]
    assert target["MinCapacity"] == ref("RelayDesiredCount")
    assert target["MaxCapacity"] == ref("RelayMaxCount")
    assert render(target["ResourceId"]) == "service/${RelayCluster}/${RelayService.Name}"
    policies = of_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    assert policies
    for policy in policies:
        assert policy["Properties"]["PolicyType"] == "TargetTrackingScaling"
        assert policy["Properties"]["ScalingTargetId"] == ref("RelayScalableTarget")


# ---- 13. the load balancer --------------------------------------------------------------


def https_rules(resources: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [
        r["Properties"]
        for r in of_type(resources, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
        if r["Properties"]["ListenerArn"] == ref("HttpsListener")
    ]
    return sorted(rules, key=lambda rule: int(rule["Priority"]))


def route(resources: dict[str, Any], path: str) -> str:
    """Where the HTTPS listener sends `path`: a target group id, or `fixed-<status>`."""
    for rule in https_rules(resources):
        patterns = [
            value
            for condition in rule["Conditions"]
            if condition["Field"] == "path-pattern"
            for value in condition["PathPatternConfig"]["Values"]
        ]
        # ALB path patterns: `*` any characters, `?` one; case-sensitive, like fnmatchcase.
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            return action_target(rule["Actions"][0])
    (default,) = resources["HttpsListener"]["Properties"]["DefaultActions"]
    return action_target(default)


def action_target(action: dict[str, Any]) -> str:
    if action["Type"] == "fixed-response":
        return f"fixed-{action['FixedResponseConfig']['StatusCode']}"
    assert action["Type"] == "forward", action
    return str(action["TargetGroupArn"]["Ref"])


def test_the_listener_rules_come_in_the_briefs_order(resources: dict[str, Any]) -> None:
    order = [
        (rule["Conditions"][0]["PathPatternConfig"]["Values"], action_target(rule["Actions"][0]))
        for rule in https_rules(resources)
    ]
    assert order == [
        (["/api/events/tickets"], "ApiTargetGroup"),
        (["/api/events/*"], "RelayTargetGroup"),
        (["/api/*"], "ApiTargetGroup"),
    ]
    assert route(resources, "/") == "RelayTargetGroup"  # the default action: the dashboard


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/api/events/tickets", "ApiTargetGroup"),
        ("/api/events/stream", "RelayTargetGroup"),
        ("/api/events/health", "RelayTargetGroup"),
        # The relay serves no metrics here (they are on RELAY_METRICS_PORT): it says 404.
        ("/api/events/metrics", "RelayTargetGroup"),
        ("/api/workers", "ApiTargetGroup"),
        ("/api/workers/w-1/labs/refresh", "ApiTargetGroup"),
        ("/api/health", "ApiTargetGroup"),
        ("/api/docs", "ApiTargetGroup"),
        ("/", "RelayTargetGroup"),
        ("/index.html", "RelayTargetGroup"),
        ("/js/sse-client.js", "RelayTargetGroup"),
    ],
)
def test_each_path_reaches_what_the_local_origin_sends_it_to(
    resources: dict[str, Any], path: str, target: str
) -> None:
    assert route(resources, path) == target


def test_the_api_target_group_invokes_the_api_function_with_permission(
    resources: dict[str, Any],
) -> None:
    group = resources["ApiTargetGroup"]
    assert group["Properties"]["TargetType"] == "lambda"
    assert group["Properties"]["Targets"] == [{"Id": get_att("ApiFunction", "Arn")}]
    permission = resources[group["DependsOn"]]["Properties"]
    assert points_at_function(permission["FunctionName"], "ApiFunction")
    assert permission["Principal"] == "elasticloadbalancing.amazonaws.com"
    assert permission["SourceAccount"] == ref("AWS::AccountId")


def test_http_redirects_to_https_with_the_given_certificate(resources: dict[str, Any]) -> None:
    http = resources["HttpListener"]["Properties"]
    (action,) = http["DefaultActions"]
    assert action["Type"] == "redirect"
    assert action["RedirectConfig"]["Protocol"] == "HTTPS"
    https = resources["HttpsListener"]["Properties"]
    assert https["Certificates"] == [{"CertificateArn": ref("CertificateArn")}]
    assert https["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")


# ---- 14. network, logs, alarms ----------------------------------------------------------

CML_CALLERS = ("ApiFunction", "MetricsCollectorFunction", "LabsRefreshFunction")


@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_only_the_functions_that_call_cml_run_in_the_vpc(
    resources: dict[str, Any], function_id: str
) -> None:
    vpc = resources[function_id]["Properties"].get("VpcConfig")
    if function_id not in CML_CALLERS:
        assert vpc is None, f"{function_id} needs no VPC (it would only start slower)"
        return
    assert vpc == {
        "SecurityGroupIds": [ref("CmlClientSecurityGroup")],
        "SubnetIds": ref("PrivateSubnetIds"),
    }


def test_new_workers_let_the_cml_callers_in_on_443(resources: dict[str, Any]) -> None:
    (ingress,) = resources["WorkerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"]) == (443, 443)
    assert ingress["SourceSecurityGroupId"] == get_att("CmlClientSecurityGroup", "GroupId")
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    with_extra, alone = if_branches(
        variables["WORKER_SECURITY_GROUP_IDS"], "HasWorkerSecurityGroups"
    )
    assert alone == ref("WorkerSecurityGroup")
    assert render(with_extra) == "${WorkerSecurityGroup},${WorkerSecurityGroupIds}"


def test_every_function_and_the_relay_log_to_a_group_with_retention(
    resources: dict[str, Any],
) -> None:
    groups = {
        render(g["Properties"]["LogGroupName"]): g["Properties"]
        for g in of_type(resources, "AWS::Logs::LogGroup").values()
    }
    assert len(groups) == len(FUNCTIONS) + 1
    assert "/ecs/${AWS::StackName}/relay" in groups
    assert all(g["RetentionInDays"] == ref("LogRetentionDays") for g in groups.values())
    for function_id in FUNCTIONS:
        logging = resources[function_id]["Properties"]["LoggingConfig"]
        group = resources[logging["LogGroup"]["Ref"]]["Properties"]["LogGroupName"]
        assert render(group).startswith("/aws/lambda/${AWS::StackName}/"), function_id
        # Named without the function, so the group exists before the function can run.
        assert function_id not in render(group)


def alarms_on(resources: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    return {
        rid: a["Properties"]
        for rid, a in of_type(resources, "AWS::CloudWatch::Alarm").items()
        if a["Properties"]["MetricName"] == metric
    }


def test_every_dead_letter_queue_alarms_when_a_message_waits(resources: dict[str, Any]) -> None:
    queues = {rid for rid in of_type(resources, "AWS::SQS::Queue") if "DeadLetter" in rid}
    assert len(queues) == 4
    watched = set()
    for alarm in alarms_on(resources, "ApproximateNumberOfMessagesVisible").values():
        (dimension,) = alarm["Dimensions"]
        watched.add(dimension["Value"]["Fn::GetAtt"][0])
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert watched == queues


def test_every_function_alarms_on_errors_to_the_alarm_topic(resources: dict[str, Any]) -> None:
    watched = {
        alarm["Dimensions"][0]["Value"]["Ref"] for alarm in alarms_on(resources, "Errors").values()
    }
    assert watched == set(FUNCTIONS)
    for alarm in of_type(resources, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [ref("AlarmTopic")]


# ---- 15. least privilege ----------------------------------------------------------------

# Actions IAM cannot scope to a resource: "*" is the only form they take.
NO_RESOURCE_LEVEL = frozenset(
    {
        "ec2:describeinstances",
        "cloudwatch:getmetricdata",
        "sqs:listqueues",
        "ecr:getauthorizationtoken",
    }
)


def test_only_actions_without_resource_level_permissions_apply_to_every_resource(
    resources: dict[str, Any],
) -> None:
    offending = []
    for where, statement in policy_statements(resources):
        if statement.get("Effect") != "Allow" or statement.get("Principal"):
            continue
        if "*" in as_list(statement.get("Resource", [])):
            actions = {str(a).lower() for a in as_list(statement["Action"])}
            if not actions <= NO_RESOURCE_LEVEL:
                offending.append((where, statement))
    assert not offending, offending


# Which queues the relay and the reaper may touch, this stack's and no other's, is checked
# by the IAM evaluator in tests/iam (the ARN patterns use wildcards and conditions).


def test_the_relay_subscribes_only_its_queues_and_cannot_publish_or_write(
    resources: dict[str, Any],
) -> None:
    statements = role_statements(resources, "RelayTaskRole")
    (subscribe,) = [s for s in statements if "sns:Subscribe" in as_list(s["Action"])]
    assert subscribe["Resource"] == ref("DomainEventsTopic")
    assert subscribe["Condition"]["StringEquals"] == {"sns:Protocol": "sqs"}
    assert "sns:Endpoint" in subscribe["Condition"]["StringLike"]
    assert allows(statements, "sns:Unsubscribe", topic_arn_forms("DomainEventsTopic"))
    assert not allows(statements, "sns:Publish", topic_arn_forms("DomainEventsTopic"))
    for action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan"):
        assert not allows(statements, action, {"${WorkersTable.Arn}"}), action
    (delete,) = [s for s in statements if "dynamodb:DeleteItem" in as_list(s["Action"])]
    assert delete["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["TICKET#*"]}
    }


def test_the_execution_role_pulls_only_from_the_relay_images_repository(
    resources: dict[str, Any],
) -> None:
    statements = role_statements(resources, "RelayExecutionRole")
    (pull,) = [s for s in statements if "ecr:BatchGetImage" in as_list(s["Action"])]
    text, variables = pull["Resource"]["Fn::Sub"]
    assert text == "arn:${AWS::Partition}:ecr:${Region}:${Account}:repository/${Repository}"
    assert set(variables) == {"Region", "Account", "Repository"}
    assert allows(statements, "logs:PutLogEvents", {"${RelayLogGroup.Arn}"})


# ---- 16. localization for moto ----------------------------------------------------------


def test_localize_drops_exactly_the_types_moto_cannot_create_and_no_reference_remains(
    localized: LocalTemplate,
) -> None:
    from moto.cloudformation.parsing import get_model_map

    modeled = set(get_model_map())
    local = localized.cloudformation
    types = {r["Type"] for r in local["Resources"].values()}
    assert not types - modeled - SKIPPED_BY_MOTO, "a type moto skips would vanish silently"
    assert set(localized.dropped.values()) == set(NOT_IN_MOTO)
    assert not set(NOT_IN_MOTO) & modeled, "moto models it now: stop dropping it"
    text = json.dumps({"Resources": local["Resources"], "Outputs": local.get("Outputs", {})})
    for logical_id in localized.dropped:
        assert f'"Ref": "{logical_id}"' not in text
        assert f'["{logical_id}",' not in text  # Fn::GetAtt
        assert "${" + logical_id + "}" not in text


def test_localize_stands_a_local_vpc_in_for_the_network_parameters(
    localized: LocalTemplate,
) -> None:
    local = localized.cloudformation
    for name in LOCAL_NETWORK:
        assert name not in local["Parameters"]
        assert f'"Ref": "{name}"' not in json.dumps(local["Resources"])
    assert local["Resources"]["LocalVpc"]["Type"] == "AWS::EC2::VPC"
    for name, value in LOCAL_DEFAULTS.items():
        assert local["Parameters"][name]["Default"] == value


@pytest.fixture(scope="module")
def deployed_with_cognito(deployed: dict[str, Any]) -> dict[str, Any]:
    """The default configuration (Cognito, no external issuer), beside `deployed` in moto."""
    parameters = {k: v for k, v in LOCAL_PARAMETERS.items() if not k.startswith("Oidc")}
    localized = localize(bucket=BUCKET, parameters=parameters)
    return _create_in_moto(localized, parameters, f"{STACK_NAME}-cognito")


def test_the_default_cognito_configuration_creates_a_stack_in_moto_too(
    deployed_with_cognito: dict[str, Any],
) -> None:
    stack = deployed_with_cognito["stack"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    assert outputs["UserPoolId"] == "local-UserPool"
    assert outputs["OidcIssuerUrl"].startswith("https://cognito-idp.us-east-1.amazonaws.com/")


def test_the_relay_task_definition_in_moto_has_settings_the_relay_accepts(
    deployed: dict[str, Any],
) -> None:
    ecs = boto3.client("ecs")
    cluster = deployed["physical"]["RelayCluster"]
    (service_arn,) = ecs.list_services(cluster=cluster)["serviceArns"]
    (service,) = ecs.describe_services(cluster=cluster, services=[service_arn])["services"]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
    (container,) = definition["taskDefinition"]["containerDefinitions"]
    values = {item["name"].lower(): item["value"] for item in container["environment"]}
    settings = RelaySettings(**values)
    assert settings.topic_arn == deployed["physical"]["DomainEventsTopic"]
    assert settings.table_name == deployed["physical"]["WorkersTable"]
    assert settings.dashboard_sign_in == "oidc"
    assert container["stopTimeout"] > relay_shutdown_seconds(
        {k.upper(): v for k, v in values.items()}
    )


def test_the_load_balancer_in_moto_routes_with_the_rules_in_priority_order(
    deployed: dict[str, Any],
) -> None:
    elbv2 = boto3.client("elbv2")
    balancer_arn = deployed["physical"]["LoadBalancer"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=balancer_arn)["Listeners"]
    (https,) = [listener for listener in listeners if listener["Port"] == 443]
    rules = elbv2.describe_rules(ListenerArn=https["ListenerArn"])["Rules"]
    assert [rule["Priority"] for rule in rules] == ["10", "20", "30", "default"]


def test_localize_records_only_the_subscriptions_whose_condition_holds() -> None:
    assert localize(bucket=BUCKET, parameters=LOCAL_PARAMETERS).subscriptions == []
    with_mail = localize(bucket=BUCKET, parameters=LOCAL_PARAMETERS | {"AlarmEmail": "ops@x.io"})
    assert [s["Protocol"] for s in with_mail.subscriptions] == ["email"]
