"""Issue 13, "quiet surfaces": what the template lets out and lets in (findings L4, L7, L8).

X-Ray keeps no API responses or errors (L4); the API's concurrency is reserved so a flood
cannot take the account's (L8); the load balancer sends HSTS on every HTTPS response (L8);
the API role launches only the allowed instance types, into the configured subnet and
security groups (L7). Each test failed before its fix.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

from devstack.template import (
    TemplateRulesError,
    _condition_holds,
    load_sam_template,
    localize,
    rule_violations,
    transform_template,
)
from fleet_api.settings import ApiSettings

HSTS = "max-age=31536000; includeSubDomains"
PARTITION_REGION_ACCOUNT = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}"


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    transformed, _ = transform_template(load_sam_template(), "bucket", {})
    return transformed


@pytest.fixture(scope="module")
def api(cfn: dict[str, Any]) -> dict[str, Any]:
    return dict(cfn["Resources"]["ApiFunction"]["Properties"])


def api_statements(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The API role's inline statements by Sid."""
    role = cfn["Resources"]["ApiFunctionRole"]["Properties"]
    return {
        statement["Sid"]: statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    }


def run_instances_resources(cfn: dict[str, Any]) -> list[Any]:
    resources: list[Any] = []
    for statement in api_statements(cfn).values():
        if statement["Action"] == "ec2:RunInstances":
            listed = statement["Resource"]
            resources += listed if isinstance(listed, list) else [listed]
    return resources


# ---- L4: X-Ray ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable", ["POWERTOOLS_TRACER_CAPTURE_RESPONSE", "POWERTOOLS_TRACER_CAPTURE_ERROR"]
)
def test_l4_x_ray_records_neither_the_apis_responses_nor_its_errors(
    api: dict[str, Any], variable: str
) -> None:
    # Responses hold stream tickets and unmasked worker lists; an error's message can
    # quote the request. Tracing itself (timings, the call graph) stays on.
    value = api["Environment"]["Variables"].get(variable)

    assert value == "false"
    assert resolve_truthy_env_var_choice(env=value) is False
    assert api["TracingConfig"] == {"Mode": "Active"}


# ---- L8: reserved concurrency ------------------------------------------------------------


def test_l8_the_api_reserves_the_concurrency_the_parameter_gives_and_none_for_0(
    cfn: dict[str, Any], api: dict[str, Any]
) -> None:
    parameter = cfn["Parameters"]["ApiReservedConcurrency"]
    assert parameter["Type"] == "Number"
    assert int(parameter["Default"]) == 25
    assert int(parameter["MinValue"]) == 0
    (condition, reserved, otherwise), *_ = api["ReservedConcurrentExecutions"].values()
    assert reserved == {"Ref": "ApiReservedConcurrency"}
    assert otherwise == {"Ref": "AWS::NoValue"}
    holds = {
        value: _condition_holds(cfn, condition, {"ApiReservedConcurrency": value})
        for value in ("0", "25", "100")
    }
    assert holds == {"0": False, "25": True, "100": True}


# ---- L8: HSTS from the load balancer -----------------------------------------------------


def test_l8_the_https_listener_sends_hsts_for_a_year_including_subdomains(
    cfn: dict[str, Any],
) -> None:
    listener = cfn["Resources"]["HttpsListener"]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in listener.get("ListenerAttributes", [])}

    assert attributes["routing.http.response.strict_transport_security.header_value"] == HSTS


# ---- L7: what the API may launch, and where ------------------------------------------------


def test_l7_the_allowed_types_include_the_default_worker_type_and_current_metal_types(
    cfn: dict[str, Any], api: dict[str, Any]
) -> None:
    parameters = cfn["Parameters"]
    allowed = parameters["AllowedInstanceTypes"]
    assert allowed["Type"] == "CommaDelimitedList"
    defaults = allowed["Default"].split(",")
    assert parameters["WorkerInstanceType"]["Default"] in defaults
    assert {"m5zn.metal", "m7i.metal-24xl", "c7i.metal-48xl"} <= set(defaults)
    variables = api["Environment"]["Variables"]
    assert variables["ALLOWED_INSTANCE_TYPES"] == {
        "Fn::Join": [",", {"Ref": "AllowedInstanceTypes"}]
    }
    # The default list is one the API's settings accept.
    settings = ApiSettings(
        table_name="workers",
        idempotency_table_name="idempotency",
        topic_arn="arn:aws:sns:us-east-1:123456789012:events",
        cml_ami_id="ami-0c0ffee0c0ffee000",
        oidc_issuer="https://issuer.example.com",
        oidc_audience="dashboard",
        allowed_instance_types=allowed["Default"],
    )
    assert set(settings.launchable_instance_types) == set(defaults)


def test_l7_a_worker_type_outside_the_allowed_types_is_refused_before_anything_is_created(
    cfn: dict[str, Any],
) -> None:
    assert rule_violations(cfn, {}) == []
    broken = {"WorkerInstanceType": "p5.48xlarge"}
    assert rule_violations(cfn, broken) == ["AllowedInstanceTypes must include WorkerInstanceType."]
    assert rule_violations(cfn, broken | {"AllowedInstanceTypes": "m5zn.metal,p5.48xlarge"}) == []
    # A type is matched whole, not as a part of another one.
    assert rule_violations(cfn, {"WorkerInstanceType": "5.metal"}) != []
    with pytest.raises(TemplateRulesError, match="AllowedInstanceTypes"):
        localize(parameters={"CmlAmiId": "ami-0c0ffee0c0ffee000", **broken})


def test_l7_instances_launch_only_as_allowed_types(cfn: dict[str, Any]) -> None:
    statement = api_statements(cfn)["LaunchOnlyInstancesTaggedForThisStack"]

    assert statement["Resource"] == {"Fn::Sub": f"{PARTITION_REGION_ACCOUNT}:instance/*"}
    assert statement["Condition"]["StringEquals"]["ec2:InstanceType"] == {
        "Ref": "AllowedInstanceTypes"
    }


def test_l7_instances_launch_only_into_the_workers_subnet_and_security_groups(
    cfn: dict[str, Any], api: dict[str, Any]
) -> None:
    resources = run_instances_resources(cfn)
    assert {"Fn::Sub": f"{PARTITION_REGION_ACCOUNT}:subnet/*"} not in resources
    # The subnet: the one new workers launch in, exactly as the API is told it.
    subnet = api["Environment"]["Variables"]["WORKER_SUBNET_ID"]
    assert {
        "Fn::Sub": [f"{PARTITION_REGION_ACCOUNT}:subnet/${{Subnet}}", {"Subnet": subnet}]
    } in resources
    # The security groups: any, but only with the ids the API is told to launch with.
    groups = api["Environment"]["Variables"]["WORKER_SECURITY_GROUP_IDS"]
    pinned = api_statements(cfn)["LaunchOnlyIntoTheWorkerSecurityGroups"]
    assert pinned["Resource"] == {"Fn::Sub": f"{PARTITION_REGION_ACCOUNT}:security-group/*"}
    assert pinned["Condition"] == {
        "StringEquals": {"ec2:SecurityGroupID": {"Fn::Split": [",", groups]}}
    }
    others = [s for sid, s in api_statements(cfn).items() if sid != pinned["Sid"]]
    assert not [
        s
        for s in others
        if s["Action"] == "ec2:RunInstances" and "security-group" in str(s["Resource"])
    ]
