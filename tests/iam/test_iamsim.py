"""The IAM bridge: requests evaluated by iam-simulate against a role's policies, in one process."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devstack import iamsim
from devstack.iamsim import (
    ContextValue,
    IamRequest,
    IamResult,
    IamSimulatorError,
    NamedPolicy,
    StatementRef,
    format_denial,
    needed_statement,
    simulate,
)

ACCOUNT = "123456789012"
ROLE = "relay"
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:role/cmlfleet-relay"
RELAY_QUEUES = f"arn:aws:sqs:us-east-1:{ACCOUNT}:cmlfleet-relay-????????????????"
RELAY_QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:cmlfleet-relay-0123456789abcdef"
EVENTS_QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:cmlfleet-events"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:cmlfleet-events"
INSTANCE = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"
TABLE = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/cmlfleet-workers"
WORKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/cmlfleet-worker"
STACK_TAG = "aws:ResourceTag/cmlfleet:stack"

STATEMENTS: list[dict[str, Any]] = [
    {
        "Sid": "ReceiveRelay",
        "Effect": "Allow",
        "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
        "Resource": RELAY_QUEUES,
    },
    {
        "Sid": "SubscribeRelay",
        "Effect": "Allow",
        "Action": "sns:Subscribe",
        "Resource": TOPIC,
        "Condition": {
            "StringEquals": {"sns:Protocol": "sqs"},
            "StringLike": {"sns:Endpoint": RELAY_QUEUES},
        },
    },
    {
        "Sid": "StopOwnWorkers",
        "Effect": "Allow",
        "Action": "ec2:StopInstances",
        "Resource": f"arn:aws:ec2:*:{ACCOUNT}:instance/*",
        "Condition": {"StringEquals": {STACK_TAG: "cmlfleet-prod"}},
    },
    {
        "Sid": "NeverTouchUntagged",
        "Effect": "Deny",
        "Action": "ec2:StopInstances",
        "Resource": "*",
        "Condition": {"Null": {STACK_TAG: "true"}},
    },
    {
        "Sid": "DeleteWorkerItems",
        "Effect": "Allow",
        "Action": "dynamodb:DeleteItem",
        "Resource": TABLE,
        "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["WORKER#*"]}},
    },
    {
        "Sid": "PassWorkerRoleToEc2",
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": WORKER_ROLE,
        "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
    },
    {
        "Sid": "TagOnLaunch",
        "Effect": "Allow",
        "Action": "ec2:CreateTags",
        "Resource": f"arn:aws:ec2:*:{ACCOUNT}:instance/*",
        "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
    },
    {
        "Sid": "LaunchTagged",
        "Effect": "Allow",
        "Action": "ec2:RunInstances",
        "Resource": f"arn:aws:ec2:*:{ACCOUNT}:instance/*",
        "Condition": {
            "StringEquals": {"aws:RequestTag/cmlfleet:stack": "cmlfleet-prod"},
            "ForAllValues:StringEquals": {"aws:TagKeys": ["cmlfleet:stack", "Name"]},
        },
    },
    {"Effect": "Allow", "Action": "sqs:*", "Resource": EVENTS_QUEUE},
    {"Sid": "KeepQueues", "Effect": "Deny", "Action": "sqs:DeleteQueue", "Resource": "*"},
]
POLICIES = [NamedPolicy("relay-policy", {"Version": "2012-10-17", "Statement": STATEMENTS})]


def request(action: str, resource: str, **context: ContextValue) -> IamRequest:
    return IamRequest(
        id=f"{action} {resource}",
        role=ROLE,
        principal=PRINCIPAL,
        action=action,
        resource=resource,
        account_id=ACCOUNT,
        context=context,
    )


def tagged(value: str | None) -> dict[str, str]:
    return {} if value is None else {STACK_TAG: value}


def one(req: IamRequest, policies: list[NamedPolicy] = POLICIES) -> IamResult:
    [result] = simulate({req.role: policies}, [req])
    return result


def test_an_allowed_call_names_the_statement_that_allows_it() -> None:
    result = one(request("sqs:ReceiveMessage", RELAY_QUEUE))

    assert result.decision == "Allowed"
    assert result.allowed
    assert result.allowed_by == (StatementRef("relay-policy", "ReceiveRelay"),)
    assert result.errors == ()


def test_a_statement_without_a_sid_is_named_by_its_position() -> None:
    result = one(request("sqs:SendMessage", EVENTS_QUEUE))

    assert result.allowed_by == (StatementRef("relay-policy", "9"),)


def test_a_wrong_resource_is_implicitly_denied_with_an_explanation() -> None:
    other = f"arn:aws:sqs:us-east-1:{ACCOUNT}:someone-else"
    policies = [NamedPolicy("relay-policy", {"Version": "2012-10-17", "Statement": STATEMENTS[0]})]

    result = one(request("sqs:ReceiveMessage", other), policies)

    assert result.decision == "ImplicitlyDenied"
    assert not result.allowed
    assert result.allowed_by == ()
    assert result.explain == (
        "relay-policy#ReceiveRelay (Allow): action matched; Resource not matched: "
        f"{RELAY_QUEUES} (resourceIdMismatch)",
    )


@pytest.mark.parametrize(
    ("queue", "decision"),
    [
        ("cmlfleet-relay-0123456789abcdef", "Allowed"),
        ("cmlfleet-relay-dev-0123456789abcdef", "ImplicitlyDenied"),
        ("cmlfleet-relay-0123456789abcde", "ImplicitlyDenied"),
    ],
)
def test_question_marks_match_exactly_one_character_in_resources_and_conditions(
    queue: str, decision: str
) -> None:
    queue_arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue}"

    receive = one(request("sqs:DeleteMessage", queue_arn))
    subscribe = one(
        request("sns:Subscribe", TOPIC, **{"sns:Protocol": "sqs", "sns:Endpoint": queue_arn})
    )

    assert (receive.decision, subscribe.decision) == (decision, decision)


def test_sns_subscribe_without_protocol_and_endpoint_fails_both_conditions() -> None:
    result = one(request("sns:Subscribe", TOPIC))

    assert result.decision == "ImplicitlyDenied"
    [line] = [line for line in result.explain if "SubscribeRelay" in line]
    assert 'StringEquals sns:Protocol ["sqs"]: key absent from the request' in line
    assert f'StringLike sns:Endpoint ["{RELAY_QUEUES}"]: key absent from the request' in line


@pytest.mark.parametrize(
    ("tag", "decision", "because"),
    [
        ("cmlfleet-prod", "Allowed", None),
        ("cmlfleet-dev", "ImplicitlyDenied", 'request has "cmlfleet-dev"'),
        (None, "ExplicitlyDenied", None),
    ],
)
def test_stopping_an_instance_depends_on_its_stack_tag(
    tag: str | None, decision: str, because: str | None
) -> None:
    result = one(request("ec2:StopInstances", INSTANCE, **tagged(tag)))

    assert result.decision == decision
    if decision == "ExplicitlyDenied":
        # The Null condition matches a missing tag, and the Deny outranks everything.
        assert result.denied_by == (StatementRef("relay-policy", "NeverTouchUntagged"),)
    if because is not None:
        assert any("StopOwnWorkers" in line and because in line for line in result.explain)


@pytest.mark.parametrize(
    ("leading_keys", "decision"),
    [
        (["WORKER#w-1"], "Allowed"),
        (["WORKER#w-1", "WORKER#w-2"], "Allowed"),
        (["WORKER#w-1", "LAB#l-1"], "ImplicitlyDenied"),
        (None, "Allowed"),  # ForAllValues over no values holds, as in AWS
    ],
)
def test_deleting_items_requires_every_leading_key_to_be_a_worker(
    leading_keys: list[str] | None, decision: str
) -> None:
    context = {} if leading_keys is None else {"dynamodb:LeadingKeys": leading_keys}

    result = one(request("dynamodb:DeleteItem", TABLE, **context))

    assert result.decision == decision
    if decision == "ImplicitlyDenied":
        assert any('request values not matched: ["LAB#l-1"]' in line for line in result.explain)


def test_an_explicit_deny_wins_over_an_allow() -> None:
    result = one(request("sqs:DeleteQueue", EVENTS_QUEUE))

    assert result.decision == "ExplicitlyDenied"
    assert result.denied_by == (StatementRef("relay-policy", "KeepQueues"),)
    assert result.allowed_by == (StatementRef("relay-policy", "9"),)
    assert "explicitly denied by relay-policy#KeepQueues" in format_denial(
        "delete the events queue", request("sqs:DeleteQueue", EVENTS_QUEUE), result, POLICIES
    )


@pytest.mark.parametrize(
    ("service", "decision"),
    [
        ("ec2.amazonaws.com", "Allowed"),
        ("lambda.amazonaws.com", "ImplicitlyDenied"),
        (None, "ImplicitlyDenied"),
    ],
)
def test_the_worker_role_may_only_be_passed_to_ec2(service: str | None, decision: str) -> None:
    context = {} if service is None else {"iam:PassedToService": service}

    assert one(request("iam:PassRole", WORKER_ROLE, **context)).decision == decision


@pytest.mark.parametrize(
    ("create_action", "decision"),
    [("RunInstances", "Allowed"), ("CreateVolume", "ImplicitlyDenied"), (None, "ImplicitlyDenied")],
)
def test_tags_may_only_be_created_while_launching(create_action: str | None, decision: str) -> None:
    context = {} if create_action is None else {"ec2:CreateAction": create_action}

    assert one(request("ec2:CreateTags", INSTANCE, **context)).decision == decision


@pytest.mark.parametrize(
    ("stack", "tag_keys", "decision"),
    [
        ("cmlfleet-prod", ["cmlfleet:stack", "Name"], "Allowed"),
        ("cmlfleet-dev", ["cmlfleet:stack"], "ImplicitlyDenied"),
        ("cmlfleet-prod", ["cmlfleet:stack", "Owner"], "ImplicitlyDenied"),
    ],
)
def test_instances_are_launched_with_the_stack_tag_and_no_other_tags(
    stack: str, tag_keys: list[str], decision: str
) -> None:
    context = {"aws:RequestTag/cmlfleet:stack": stack, "aws:TagKeys": tag_keys}

    assert one(request("ec2:RunInstances", INSTANCE, **context)).decision == decision


@pytest.mark.parametrize(
    ("req", "error"),
    [
        (
            request("sqs:ReceiveMesage", RELAY_QUEUE),
            'invalid.action: unknown action "sqs:ReceiveMesage"',
        ),
        (
            request("ec2:StopInstances", RELAY_QUEUE),
            f'no.resource.types: resource "{RELAY_QUEUE}" is not an ARN of a resource type that '
            "ec2:StopInstances accepts "
            "(arn:${Partition}:ec2:${Region}:${Account}:instance/${InstanceId})",
        ),
        (
            request("ec2:DescribeInstances", INSTANCE),
            "must.use.wildcard: ec2:DescribeInstances has no resource types (wildcard-only): "
            f'its resource must be "*", not "{INSTANCE}"',
        ),
        (
            request("ec2:StopInstances", INSTANCE, **{"sns:Endpoint": RELAY_QUEUE}),
            "context key sns:Endpoint does not apply to ec2:StopInstances on instance "
            "(iam-simulate would ignore it)",
        ),
        (
            request("dynamodb:DeleteItem", TABLE, **{"dynamodb:LeadingKeys": "WORKER#w-1"}),
            "context key dynamodb:LeadingKeys is multi-valued (ArrayOfString): "
            "give a list of strings",
        ),
        (
            request("iam:PassRole", WORKER_ROLE, **{"iam:PassedToService": ["ec2.amazonaws.com"]}),
            "context key iam:PassedToService is single-valued (String): give one string",
        ),
    ],
    ids=[
        "unknown action",
        "wrong resource type",
        "arn for wildcard-only",
        "foreign key",
        "str for list",
        "list for str",
    ],
)
def test_a_request_iam_would_not_see_this_way_is_an_error(req: IamRequest, error: str) -> None:
    result = one(req)

    assert result.decision == "Error"
    assert not result.allowed
    assert result.errors == (error,)


def test_an_invalid_policy_and_an_unknown_role_are_errors() -> None:
    broken = [NamedPolicy("broken", {"Version": "2012-10-17", "Statement": [{"Effect": "Allw"}]})]
    stranger = IamRequest(
        "stranger", "nobody", PRINCIPAL, "sqs:ReceiveMessage", RELAY_QUEUE, ACCOUNT
    )

    invalid, unknown = simulate(
        {ROLE: broken}, [request("sqs:ReceiveMessage", RELAY_QUEUE), stranger]
    )

    assert invalid.decision == unknown.decision == "Error"
    assert any(e.startswith("policy broken: Statement[0].Effect:") for e in invalid.errors)
    assert unknown.errors == ('no policies given for role "nobody"',)


def test_a_cross_account_call_needs_the_resource_policy_that_is_passed_through() -> None:
    foreign_queue = "arn:aws:sqs:us-east-1:210987654321:shared-0123456789abcdef"
    send_there = {"Sid": "SendShared", "Effect": "Allow", "Action": "sqs:SendMessage"}
    identity = NamedPolicy(
        "shared-queue",
        {"Version": "2012-10-17", "Statement": {**send_there, "Resource": foreign_queue}},
    )
    queue_policy = {
        "Version": "2012-10-17",
        "Statement": {
            "Sid": "LetRelayIn",
            "Effect": "Allow",
            "Principal": {"AWS": PRINCIPAL},
            "Action": "sqs:SendMessage",
            "Resource": foreign_queue,
        },
    }
    alone = replace(request("sqs:SendMessage", foreign_queue), account_id="210987654321")
    with_policy = replace(alone, id="with queue policy", resource_policy=queue_policy)

    denied, granted = simulate({ROLE: [identity]}, [alone, with_policy])

    assert denied.decision == "ImplicitlyDenied"
    assert granted.decision == "Allowed"
    assert set(granted.allowed_by) == {
        StatementRef("shared-queue", "SendShared"),
        StatementRef("resource policy", "LetRelayIn"),
    }


def test_a_few_thousand_requests_are_evaluated_in_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        runs.append(args)
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    # 1000 distinct requests, each asked three times, as recorded polls repeat themselves.
    requests = [
        request("dynamodb:DeleteItem", TABLE, **{"dynamodb:LeadingKeys": [f"{kind}#{i % 500}"]})
        for i in range(1500)
        for kind in ("WORKER", "LAB")
    ]
    requests = [replace(r, id=str(n)) for n, r in enumerate(requests)]

    results = simulate({ROLE: POLICIES}, requests)

    assert len(runs) == 1
    assert [r.id for r in results] == [str(n) for n in range(3000)]
    assert [r.decision for r in results] == ["Allowed", "ImplicitlyDenied"] * 1500
    assert replace(results[1], id="") == replace(results[1001], id="")
    assert replace(results[1], id="") != replace(results[3], id="")


def test_a_denial_message_shows_the_call_and_a_statement_that_would_allow_it() -> None:
    req = request("ec2:StopInstances", INSTANCE, **{STACK_TAG: "cmlfleet-dev"})
    result = one(req)

    message = format_denial("InstanceStateFunction stops worker w-1", req, result, POLICIES)

    assert message.splitlines()[:5] == [
        "IAM ImplicitlyDenied: InstanceStateFunction stops worker w-1",
        f"  role:     {ROLE} ({PRINCIPAL})",
        "  action:   ec2:StopInstances",
        f"  resource: {INSTANCE}",
        f'  context:  {{"{STACK_TAG}": "cmlfleet-dev"}}',
    ]
    assert needed_statement(req, POLICIES, result) == {
        "Effect": "Allow",
        "Action": "ec2:StopInstances",
        "Resource": INSTANCE,
        "Condition": {"StringEquals": {STACK_TAG: "cmlfleet-dev"}},
    }
    assert json.dumps(needed_statement(req, POLICIES, result), indent=2).splitlines()[1] in message


@pytest.mark.parametrize(
    "req",
    [
        request("ec2:StopInstances", INSTANCE, **{STACK_TAG: "cmlfleet-dev"}),
        request("dynamodb:DeleteItem", TABLE, **{"dynamodb:LeadingKeys": ["LAB#l-1"]}),
        request("iam:PassRole", WORKER_ROLE, **{"iam:PassedToService": "lambda.amazonaws.com"}),
        request(
            "ec2:RunInstances",
            INSTANCE,
            **{"aws:TagKeys": ["Owner"], "ec2:InstanceType": "m5.large"},
        ),
    ],
    ids=["tag", "leading keys", "passed to", "tag keys"],
)
def test_the_suggested_statement_does_allow_the_denied_request(req: IamRequest) -> None:
    denied = one(req)
    suggestion = NamedPolicy(
        "suggested",
        {"Version": "2012-10-17", "Statement": [needed_statement(req, POLICIES, denied)]},
    )

    allowed = one(req, [*POLICIES, suggestion])

    assert denied.decision == "ImplicitlyDenied"
    assert allowed.decision == "Allowed"
    assert allowed.allowed_by == (StatementRef("suggested", "1"),)


def test_the_suggested_statement_only_conditions_on_keys_the_role_uses() -> None:
    req = request(
        "ec2:RunInstances", INSTANCE, **{"aws:TagKeys": ["Owner"], "ec2:InstanceType": "m5.large"}
    )

    condition: Mapping[str, Any] = needed_statement(req, POLICIES)["Condition"]

    assert condition == {"ForAllValues:StringEquals": {"aws:TagKeys": ["Owner"]}}


def test_a_missing_install_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(iamsim, "IAM_DIR", tmp_path)

    with pytest.raises(IamSimulatorError, match=r"npm ci --prefix devstack/iam"):
        simulate({ROLE: POLICIES}, [request("sqs:ReceiveMessage", RELAY_QUEUE)])


def test_a_missing_node_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)

    with pytest.raises(IamSimulatorError, match=r"node is not on PATH"):
        simulate({ROLE: POLICIES}, [request("sqs:ReceiveMessage", RELAY_QUEUE)])


def test_a_wildcard_resource_is_allowed_if_any_matching_resource_is_and_says_so() -> None:
    result = one(request("ec2:StopInstances", "*", **tagged("cmlfleet-prod")))

    assert result.decision == "Allowed"
    assert result.explain[0].startswith('resource "*" has a wildcard: evaluated as ')
    assert result.explain[0].endswith("Allowed if any one is allowed")
