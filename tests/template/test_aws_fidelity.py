"""What the template must say for the stack to behave on AWS as it does on moto.

Each test pins a fix for a way a real deploy would fail, or go wrong later, that moto, the
SAM transform and cfn-lint all let through (the rules CloudFormation checks before it
creates anything, Lambda's asynchronous invocation, autoscaling against deploys, the
workers' instance role, ECS draining).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from typing import Any

import pytest

from devstack.stack import LOCAL_PARAMETERS
from devstack.template import (
    ROOT,
    TemplateRulesError,
    load_sam_template,
    localize,
    rule_violations,
    transform_template,
)
from fleet_api.settings import ApiSettings
from relay.settings import RelaySettings

# Fargate's task sizes (Amazon ECS developer guide, "Fargate task CPU and memory"), for
# the CPU and memory values the template offers.
FARGATE_MEMORY = {
    256: {512, 1024, 2048},
    512: {1024, 2048, 3072, 4096},
    1024: {2048, 3072, 4096, 5120, 6144, 7168, 8192},
    2048: set(range(4096, 16385, 1024)),
    4096: set(range(8192, 30721, 1024)),
}


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    transformed, _ = transform_template(load_sam_template(), "bucket", {})
    return transformed


@pytest.fixture(scope="module")
def resources(cfn: dict[str, Any]) -> dict[str, Any]:
    return dict(cfn["Resources"])


def samconfig_parameters(environment: str) -> dict[str, str]:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    overrides = config[environment]["deploy"]["parameters"]["parameter_overrides"]
    return dict(re.findall(r'(\w+)="([^"]*)"', overrides))


# ---- Rules: impossible parameter combinations refused before anything is created -------


def test_every_cpu_and_memory_pair_is_refused_exactly_when_fargate_does_not_offer_it(
    cfn: dict[str, Any],
) -> None:
    parameters = cfn["Parameters"]
    for cpu, memory in itertools.product(
        parameters["RelayCpu"]["AllowedValues"], parameters["RelayMemory"]["AllowedValues"]
    ):
        refused = rule_violations(cfn, {"RelayCpu": str(cpu), "RelayMemory": str(memory)})
        offered = memory in FARGATE_MEMORY[cpu]
        assert bool(refused) != offered, (cpu, memory, refused)


def test_fewer_relay_tasks_allowed_than_desired_is_refused(cfn: dict[str, Any]) -> None:
    desired = cfn["Parameters"]["RelayDesiredCount"]
    most = cfn["Parameters"]["RelayMaxCount"]
    for wanted, cap in itertools.product(
        range(desired["MinValue"], desired["MaxValue"] + 1),
        range(most["MinValue"], most["MaxValue"] + 1),
    ):
        counts = {"RelayDesiredCount": str(wanted), "RelayMaxCount": str(cap)}
        refused = rule_violations(cfn, counts)
        assert bool(refused) == (cap < wanted), (wanted, cap, refused)


@pytest.mark.parametrize(
    ("parameters", "refused"),
    [
        ({"OidcIssuer": "https://idp.example.com"}, "OidcIssuer needs OidcAudience"),
        ({"OidcAudience": "dashboard"}, "OidcAudience is for an external issuer only"),
        (
            {
                "OidcIssuer": "https://idp.example.com",
                "OidcAudience": "dashboard",
                "OidcAuthorizeUrl": "https://idp.example.com/authorize",
            },
            "OidcAuthorizeUrl needs OidcTokenUrl",
        ),
    ],
)
def test_an_incomplete_identity_configuration_is_refused(
    cfn: dict[str, Any], parameters: dict[str, str], refused: str
) -> None:
    assert any(refused in violation for violation in rule_violations(cfn, parameters))


@pytest.mark.parametrize("environment", ["default", "production"])
def test_the_saved_deploy_settings_and_the_defaults_pass_every_rule(
    cfn: dict[str, Any], environment: str
) -> None:
    assert rule_violations(cfn, {}) == []
    assert rule_violations(cfn, samconfig_parameters(environment)) == []
    assert rule_violations(cfn, LOCAL_PARAMETERS) == []


def test_the_local_stack_refuses_what_cloudformation_would() -> None:
    with pytest.raises(TemplateRulesError, match="RelayCpu 256 runs with RelayMemory"):
        localize(parameters=LOCAL_PARAMETERS | {"RelayCpu": "256", "RelayMemory": "4096"})


# ---- Lambda's asynchronous invocation ------------------------------------------------


def invoke_configs(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["FunctionName"]["Ref"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventInvokeConfig"
    }


def asynchronously_invoked(resources: dict[str, Any]) -> set[str]:
    """Functions that an EventBridge rule or a Scheduler schedule invokes."""
    invoked = set()
    for resource in resources.values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Events::Rule":
            invoked |= {t["Arn"]["Fn::GetAtt"][0] for t in properties["Targets"]}
        elif resource["Type"] == "AWS::Scheduler::Schedule":
            invoked.add(properties["Target"]["Arn"]["Fn::GetAtt"][0])
    return invoked


def test_every_function_eventbridge_or_scheduler_invokes_says_what_lambda_does_on_failure(
    resources: dict[str, Any],
) -> None:
    configs = invoke_configs(resources)
    assert asynchronously_invoked(resources) == {
        "InstanceStateFunction",
        "MetricsCollectorFunction",
        "LabsRefreshFunction",
        "QueueReaperFunction",
    }
    assert asynchronously_invoked(resources) <= set(configs)


def test_a_failed_ec2_event_ends_in_an_alarmed_queue_the_function_may_send_to(
    resources: dict[str, Any],
) -> None:
    config = invoke_configs(resources)["InstanceStateFunction"]
    assert config["MaximumRetryAttempts"] == 2
    destination = config["DestinationConfig"]["OnFailure"]["Destination"]
    assert destination == {"Fn::GetAtt": ["InstanceStateDeadLetterQueue", "Arn"]}
    alarmed = [
        a["Properties"]["Dimensions"][0]["Value"]
        for a in resources.values()
        if a["Type"] == "AWS::CloudWatch::Alarm"
    ]
    assert {"Fn::GetAtt": ["InstanceStateDeadLetterQueue", "QueueName"]} in alarmed
    role = resources["InstanceStateFunctionRole"]["Properties"]["Policies"]
    statements = [s for p in role for s in p["PolicyDocument"]["Statement"]]
    assert {"Action": "sqs:SendMessage", "Effect": "Allow", "Resource": destination} in statements


@pytest.mark.parametrize(
    "function_id", ["MetricsCollectorFunction", "LabsRefreshFunction", "QueueReaperFunction"]
)
def test_a_failed_scheduled_run_is_not_retried_over_the_next_one(
    resources: dict[str, Any], function_id: str
) -> None:
    assert invoke_configs(resources)[function_id]["MaximumRetryAttempts"] == 0


def test_no_schedule_has_a_fixed_name_another_stack_would_collide_with(
    resources: dict[str, Any],
) -> None:
    schedules = [r for r in resources.values() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert len(schedules) == 3
    assert all("Name" not in s["Properties"] for s in schedules)


# ---- the relay on ECS ----------------------------------------------------------------


def test_deploys_leave_the_relay_count_to_autoscaling(resources: dict[str, Any]) -> None:
    assert "DesiredCount" not in resources["RelayService"]["Properties"]
    target = resources["RelayScalableTarget"]["Properties"]
    assert target["MinCapacity"] == {"Ref": "RelayDesiredCount"}


def container(resources: dict[str, Any]) -> dict[str, Any]:
    (only,) = resources["RelayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return dict(only)


def test_ecs_restarts_a_relay_only_when_its_process_is_dead_not_when_sqs_is_slow(
    resources: dict[str, Any],
) -> None:
    check = container(resources)["HealthCheck"]
    assert "/api/events/live" in check["Command"][-1]
    group = resources["RelayTargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == "/api/events/health"  # the balancer routes around
    # A relay still retrying its bus set-up is not yet failing its checks.
    opening = RelaySettings.model_fields["relay_bus_open_seconds"].default
    assert check["StartPeriod"] > opening
    grace = resources["RelayService"]["Properties"]["HealthCheckGracePeriodSeconds"]
    assert grace > opening


def test_the_relay_says_goodbye_while_the_balancer_is_still_draining_it(
    resources: dict[str, Any],
) -> None:
    attributes = {
        a["Key"]: a["Value"]
        for a in resources["RelayTargetGroup"]["Properties"]["TargetGroupAttributes"]
    }
    delay = int(attributes["deregistration_delay.timeout_seconds"])
    environment = {e["Name"]: e["Value"] for e in container(resources)["Environment"]}
    spread = int(environment["RELAY_SHUTDOWN_MAX_MS"]) / 1000
    poll = float(RelaySettings.model_fields["relay_drain_poll_seconds"].default)
    assert delay >= poll + spread + 5  # seen draining, every client told, time to reconnect


# ---- workers -------------------------------------------------------------------------


def test_new_workers_get_the_cloudwatch_agents_role_and_only_that_role_may_be_passed(
    resources: dict[str, Any],
) -> None:
    variables = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["WORKER_INSTANCE_PROFILE_ARN"] == {
        "Fn::GetAtt": ["WorkerInstanceProfile", "Arn"]
    }
    assert resources["WorkerInstanceProfile"]["Properties"]["Roles"] == [
        {"Ref": "WorkerInstanceRole"}
    ]
    role = resources["WorkerInstanceRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/CloudWatchAgentServerPolicy"}
    ]
    policies = resources["ApiFunctionRole"]["Properties"]["Policies"]
    passes = [
        s
        for p in policies
        for s in p["PolicyDocument"]["Statement"]
        if "iam:PassRole" in str(s["Action"])
    ]
    assert passes == [
        {
            "Sid": "GiveWorkersTheirInstanceRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": {"Fn::GetAtt": ["WorkerInstanceRole", "Arn"]},
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        }
    ]


@pytest.mark.parametrize(
    "instance_type", ["m5zn.metal", "m7i.metal-24xl", "c7i.metal-48xl", "r7iz.metal-16xl"]
)
def test_current_metal_instance_types_pass_the_parameter_and_the_apis_settings(
    cfn: dict[str, Any], instance_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pattern = cfn["Parameters"]["WorkerInstanceType"]["AllowedPattern"]
    assert re.fullmatch(pattern, instance_type)
    monkeypatch.setenv("WORKER_INSTANCE_TYPE", instance_type)
    settings = ApiSettings(
        table_name="workers",
        idempotency_table_name="idempotency",
        topic_arn="arn:aws:sns:us-east-1:123456789012:events",
        cml_ami_id="ami-0c0ffee0c0ffee000",
        oidc_issuer="https://issuer.example.com",
        oidc_audience="dashboard",
    )
    assert settings.worker_instance_type == instance_type
