"""Recording every AWS call the code makes, as the IAM requests AWS would evaluate.

moto evaluates no IAM, so a missing permission passes every test that runs on it. The
local stack therefore records each call the deployables make (botocore's
`provide-client-params` event on every client `cmlfleet.adapters.aws` builds), maps it to
the IAM request(s) AWS authorizes it by (`iam_requests`: action, the resource ARN it names,
the condition keys that come with it), and writes each distinct request once to a JSON
Lines file of the stack's run. `tests/iam` evaluates them against the policies of the
calling deployable's role in the SAM-transformed template, with an IAM policy evaluator.

Who calls is the role whose credentials the call would carry: `caller` is set around each
Lambda invocation (`devstack.lambdas`), around the API's requests (`devstack.origin`), and
for the whole relay process (`devstack.relayrun`). A call with no caller (test code reading
the table, say) is counted, not checked.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmlfleet import bootstrap
from cmlfleet.adapters import aws

# Set to a directory, the local stack records every AWS call its deployables make there,
# a directory per stack started; tests/iam checks them against the policies.
LOG_VARIABLE = "CMLFLEET_AWS_CALL_LOG"
# The directory of one stack's recording, for its other processes (the relay).
RUN_VARIABLE = "CMLFLEET_AWS_CALL_RUN"
POLICIES_FILE = "policies.json"
UNMAPPED = "UNMAPPED"  # the resource of a call no mapper knows
# An instance RunInstances has not made yet, and the resources it makes with it.
NEW_INSTANCE_ID = "i-00000000000000000"
NEW_VOLUME_ID = "vol-00000000000000000"
NEW_INTERFACE_ID = "eni-00000000000000000"
MAX_CONTEXTS = 20

caller: ContextVar[str | None] = ContextVar("aws_caller", default=None)


@contextmanager
def acting_as(deployable: str) -> Iterator[None]:
    """AWS calls made inside are `deployable`'s (a function's logical id, or `Relay`); its
    cached secrets and CML sessions are its own, as in a Lambda process of its own."""
    token, scope = caller.set(deployable), bootstrap.process_scope.set(deployable)
    try:
        yield
    finally:
        bootstrap.process_scope.reset(scope)
        caller.reset(token)


def acting_app(app: Any, deployable: str) -> Any:
    """An ASGI app whose requests make their AWS calls as `deployable` (the API, which the
    local stack serves in-process rather than through Lambda invocations)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        with acting_as(deployable):
            await app(scope, receive, send)

    return wrapped


@dataclass(frozen=True)
class IamRequest:
    """One authorization AWS makes for a call: `action` on `resource`, with `context`."""

    action: str
    resource: str
    context: tuple[tuple[str, str | tuple[str, ...]], ...] = ()

    def context_dict(self) -> dict[str, str | list[str]]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.context}


@dataclass(frozen=True)
class RecordedRequest:
    """An IAM request with who made it and the call it came from (for the failure message)."""

    caller: str
    call: str  # e.g. "sqs.ChangeMessageVisibility(QueueUrl=…)"
    request: IamRequest

    def to_json(self) -> str:
        return json.dumps(
            {
                "caller": self.caller,
                "call": self.call,
                "action": self.request.action,
                "resource": self.request.resource,
                "context": self.request.context_dict(),
            },
            sort_keys=True,
        )

    def identity(self) -> str:
        request = self.request
        return json.dumps([self.caller, request.action, request.resource, request.context])

    @classmethod
    def from_json(cls, line: str) -> RecordedRequest:
        raw = json.loads(line)
        context = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(raw["context"].items())
        )
        return cls(raw["caller"], raw["call"], IamRequest(raw["action"], raw["resource"], context))


class Lookup:
    """What a call's parameters do not say but its authorization depends on (an instance's
    tags, a secret's ARN, an instance profile's role), read from the same endpoint with
    clients of its own, whose calls are not recorded."""

    def __init__(self, client_factory: Callable[[str], Any]) -> None:
        self._client_factory = client_factory
        self._clients: dict[str, Any] = {}
        self._hash_keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._client_factory(service)
            return self._clients[service]

    def instance_tags(self, instance_id: str) -> dict[str, str]:
        try:
            reservations = self.client("ec2").describe_instances(InstanceIds=[instance_id])
        except Exception:  # an instance that does not exist has no tags to authorize by
            return {}
        for reservation in reservations.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        return {}

    def secret_arn(self, secret_id: str) -> str:
        if secret_id.startswith("arn:"):
            return secret_id
        return str(self.client("secretsmanager").describe_secret(SecretId=secret_id)["ARN"])

    def profile_roles(self, profile: Mapping[str, str]) -> list[str]:
        name = profile.get("Name") or profile.get("Arn", "").rsplit("/", 1)[-1]
        found = self.client("iam").get_instance_profile(InstanceProfileName=name)
        return [str(role["Arn"]) for role in found["InstanceProfile"]["Roles"]]

    def hash_key(self, table: str) -> str:
        if table not in self._hash_keys:
            schema = self.client("dynamodb").describe_table(TableName=table)["Table"]["KeySchema"]
            self._hash_keys[table] = next(
                str(k["AttributeName"]) for k in schema if k["KeyType"] == "HASH"
            )
        return self._hash_keys[table]


@dataclass
class Recording:
    """The distinct IAM requests of one local stack's run, appended to its calls file."""

    directory: Path
    lookup: Lookup
    default_caller: str | None = None
    account: str = "123456789012"
    unattributed: list[str] = field(default_factory=list)  # calls no deployable made
    _seen: set[str] = field(default_factory=set)
    _contexts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, service: str, operation: str, params: Mapping[str, Any], region: str) -> None:
        who = caller.get() or self.default_caller
        call = f"{service}.{operation}({_summary(params)})"
        if who is None:
            with self._lock:
                self.unattributed.append(call)
            return
        requests = iam_requests(service, operation, params, region, self.account, self.lookup)
        with self._lock:
            fresh = [r for r in requests if self._is_new(who, r)]
            if fresh:  # a file per process: the relay records into the same directory
                with (self.directory / f"calls-{os.getpid()}.jsonl").open("a") as out:
                    out.writelines(RecordedRequest(who, call, r).to_json() + "\n" for r in fresh)

    def _is_new(self, who: str, request: IamRequest) -> bool:
        """Each distinct request once; at most `MAX_CONTEXTS` contexts of one action on one
        resource (idempotency keys, say, differ for every event)."""
        identity = RecordedRequest(who, "", request).identity()
        if identity in self._seen:
            return False
        shape = (who, request.action, request.resource)
        if self._contexts.get(shape, 0) >= MAX_CONTEXTS:
            return False
        self._seen.add(identity)
        self._contexts[shape] = self._contexts.get(shape, 0) + 1
        return True


_active: Recording | None = None
_installed = False


def start(recording: Recording) -> None:
    """Record from now on into `recording` (one at a time per process)."""
    global _active, _installed  # one recording per process, by design
    recording.directory.mkdir(parents=True, exist_ok=True)
    _active = recording
    if not _installed:
        aws.on_new_client(_attach)  # the handler records only while a recording is active
        _installed = True


def stop() -> Recording | None:
    global _active
    finished, _active = _active, None
    return finished


def read_requests(directory: Path) -> list[RecordedRequest]:
    """Every distinct request recorded in the run (by any of its processes)."""
    found: dict[str, RecordedRequest] = {}
    for path in sorted(directory.glob("calls-*.jsonl")):
        for line in path.read_text().splitlines():
            if line:
                recorded = RecordedRequest.from_json(line)
                found.setdefault(recorded.identity(), recorded)
    return list(found.values())


def _attach(client: Any) -> None:
    service = client.meta.service_model.service_name
    client.meta.events.register(f"provide-client-params.{_event_name(client)}", _on_call(service))


def _event_name(client: Any) -> str:
    return str(client.meta.service_model.service_id.hyphenize())


def _on_call(service: str) -> Callable[..., None]:
    def handler(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        recording = _active
        if recording is not None:
            region = str(context.get("client_region") or "us-east-1")
            recording.record(service, model.name, params, region)

    return handler


def _summary(params: Mapping[str, Any]) -> str:
    shown = []
    for key in sorted(params):
        value = json.dumps(params[key], default=str)
        shown.append(f"{key}={value if len(value) <= 80 else value[:77] + '...'}")
    return ", ".join(shown)


# ---- from a call to its IAM requests ----------------------------------------------------

Mapper = Callable[[Mapping[str, Any], "Arns", Lookup], list[IamRequest]]


@dataclass(frozen=True)
class Arns:
    region: str
    account: str

    def of(self, service: str, resource: str, *, account: bool = True) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account if account else ''}:{resource}"

    def queue(self, url_or_name: str) -> str:
        parts = url_or_name.rstrip("/").split("/")
        account = parts[-2] if len(parts) >= 2 and parts[-2].isdigit() else self.account
        return f"arn:aws:sqs:{self.region}:{account}:{parts[-1]}"

    def table(self, name: str, index: str | None = None) -> str:
        suffix = f"/index/{index}" if index else ""
        return self.of("dynamodb", f"table/{name}{suffix}")


class UnmappedCallError(LookupError):
    """A call `iam_requests` does not know how to authorize: teach it (that is the point)."""


def iam_requests(
    service: str,
    operation: str,
    params: Mapping[str, Any],
    region: str,
    account: str,
    lookup: Lookup,
) -> list[IamRequest]:
    """The IAM requests AWS evaluates for one API call (each must be allowed)."""
    mapper = MAPPERS.get((service, operation))
    if mapper is None:
        return [IamRequest(f"{service}:{operation}", UNMAPPED)]
    return mapper(params, Arns(region, account), lookup)


def _request(action: str, resource: str, context: Mapping[str, Any] | None = None) -> IamRequest:
    items = []
    for key, value in sorted((context or {}).items()):
        if value is None:
            continue
        items.append((key, tuple(value) if isinstance(value, list | tuple) else str(value)))
    return IamRequest(action, resource, tuple(items))


def _on_resource(action: str, resource: Callable[[Mapping[str, Any], Arns], str]) -> Mapper:
    return lambda params, arns, _: [_request(action, resource(params, arns))]


def _everywhere(action: str) -> Mapper:
    """An action that IAM cannot scope to a resource."""
    return lambda params, arns, _: [_request(action, "*")]


# DynamoDB: item actions carry the partition key values as dynamodb:LeadingKeys.
def _item(action: str) -> Mapper:
    def mapper(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
        return [_item_request(action, params, arns, lookup)]

    return mapper


def _item_request(action: str, params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> IamRequest:
    table = str(params["TableName"])
    key = params.get("Key") or params.get("Item") or {}
    leading = _attribute_value(key.get(lookup.hash_key(table)))
    context = {"dynamodb:LeadingKeys": [leading]} if leading is not None else {}
    return _request(f"dynamodb:{action}", arns.table(table), context)


def _attribute_value(value: Any) -> str | None:
    if isinstance(value, Mapping):
        for kind in ("S", "N", "B"):
            if kind in value:
                return str(value[kind])
    return None


def _query(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
    table = str(params["TableName"])
    index = params.get("IndexName")
    context: dict[str, Any] = {}
    if index is None:  # the table's partition key: `pk = :value` in the key condition
        match = re.search(
            rf"\b{re.escape(lookup.hash_key(table))}\s*=\s*(:\w+)",
            str(params.get("KeyConditionExpression", "")),
        )
        values = params.get("ExpressionAttributeValues", {})
        leading = _attribute_value(values.get(match.group(1))) if match else None
        if leading is not None:
            context["dynamodb:LeadingKeys"] = [leading]
    return [_request("dynamodb:Query", arns.table(table, index), context)]


def _transaction(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
    """A transaction needs each item's own action on its table (DynamoDB developer guide,
    "IAM with transactions"); TransactWriteItems itself is not an IAM action."""
    actions = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}
    actions["ConditionCheck"] = "ConditionCheckItem"
    requests = []
    for item in params["TransactItems"]:
        (kind, operation), *_ = item.items()
        requests.append(_item_request(actions[kind], operation, arns, lookup))
    return requests


# SNS and SQS
def _topic(params: Mapping[str, Any], arns: Arns) -> str:
    return str(params["TopicArn"])


def _subscription_topic(params: Mapping[str, Any], arns: Arns) -> str:
    return str(params["SubscriptionArn"]).rsplit(":", 1)[0]


def _subscribe(params: Mapping[str, Any], arns: Arns, _: Lookup) -> list[IamRequest]:
    context = {"sns:Protocol": params.get("Protocol"), "sns:Endpoint": params.get("Endpoint")}
    return [_request("sns:Subscribe", str(params["TopicArn"]), context)]


def _queue(action: str) -> Mapper:
    return _on_resource(action, lambda params, arns: arns.queue(str(params["QueueUrl"])))


def _create_queue(params: Mapping[str, Any], arns: Arns, _: Lookup) -> list[IamRequest]:
    queue = arns.queue(str(params["QueueName"]))
    requests = [_request("sqs:CreateQueue", queue)]
    if params.get("tags"):  # tagging at creation needs the tagging right too (SQS guide)
        requests.append(_request("sqs:TagQueue", queue))
    return requests


# EC2: instances are authorized by their tags; RunInstances by each resource it makes.
def _instance_arn(arns: Arns, instance_id: str) -> str:
    return arns.of("ec2", f"instance/{instance_id}")


def _tag_context(prefix: str, tags: Mapping[str, str]) -> dict[str, Any]:
    return {f"{prefix}/{key}": value for key, value in tags.items()}


def _on_instances(action: str) -> Mapper:
    def mapper(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
        return [
            _request(
                action,
                _instance_arn(arns, instance_id),
                _tag_context("aws:ResourceTag", lookup.instance_tags(instance_id)),
            )
            for instance_id in params["InstanceIds"]
        ]

    return mapper


def _create_tags(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
    tags = {t["Key"]: t["Value"] for t in params["Tags"]}
    requests = []
    for resource_id in params["Resources"]:
        context = _tag_context("aws:RequestTag", tags) | {"aws:TagKeys": sorted(tags)}
        context |= _tag_context("aws:ResourceTag", lookup.instance_tags(resource_id))
        requests.append(_request("ec2:CreateTags", _instance_arn(arns, resource_id), context))
    return requests


def _run_instances(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
    tags = {
        t["Key"]: t["Value"]
        for spec in params.get("TagSpecifications", [])
        if spec["ResourceType"] == "instance"
        for t in spec["Tags"]
    }
    tagging = _tag_context("aws:RequestTag", tags) | {"aws:TagKeys": sorted(tags)}
    instance_context = tagging | {"ec2:InstanceType": str(params["InstanceType"])}
    tokens = params.get("MetadataOptions", {}).get("HttpTokens")
    if tokens:
        instance_context["ec2:MetadataHttpTokens"] = tokens
    instance = _instance_arn(arns, NEW_INSTANCE_ID)
    resources = [
        arns.of("ec2", f"image/{params['ImageId']}", account=False),
        arns.of("ec2", f"volume/{NEW_VOLUME_ID}"),
        arns.of("ec2", f"network-interface/{NEW_INTERFACE_ID}"),
        # Without them, EC2 takes the default subnet and the VPC's default group, which
        # IAM authorizes as well: placeholders stand for those.
        arns.of("ec2", f"subnet/{params.get('SubnetId', 'subnet-00000000')}"),
    ]
    if params.get("KeyName"):
        resources.append(arns.of("ec2", f"key-pair/{params['KeyName']}"))
    requests = [_request("ec2:RunInstances", instance, instance_context)]
    requests += [_request("ec2:RunInstances", resource) for resource in resources]
    for group in params.get("SecurityGroupIds") or ["sg-00000000"]:
        requests.append(
            _request(
                "ec2:RunInstances",
                arns.of("ec2", f"security-group/{group}"),
                {"ec2:SecurityGroupID": group},
            )
        )
    if tags:  # tags at launch are authorized as CreateTags with ec2:CreateAction
        context = tagging | {"ec2:CreateAction": "RunInstances"}
        requests.append(_request("ec2:CreateTags", instance, context))
    if params.get("IamInstanceProfile"):
        for role in lookup.profile_roles(params["IamInstanceProfile"]):
            passed = {"iam:PassedToService": "ec2.amazonaws.com"}
            requests.append(_request("iam:PassRole", role, passed))
    return requests


def _secret(params: Mapping[str, Any], arns: Arns, lookup: Lookup) -> list[IamRequest]:
    arn = lookup.secret_arn(str(params["SecretId"]))
    return [_request("secretsmanager:GetSecretValue", arn)]


MAPPERS: dict[tuple[str, str], Mapper] = {
    ("dynamodb", "GetItem"): _item("GetItem"),
    ("dynamodb", "PutItem"): _item("PutItem"),
    ("dynamodb", "UpdateItem"): _item("UpdateItem"),
    ("dynamodb", "DeleteItem"): _item("DeleteItem"),
    ("dynamodb", "Query"): _query,
    ("dynamodb", "TransactWriteItems"): _transaction,
    ("dynamodb", "DescribeTable"): _on_resource(
        "dynamodb:DescribeTable", lambda p, a: a.table(str(p["TableName"]))
    ),
    ("sns", "Publish"): _on_resource("sns:Publish", _topic),
    ("sns", "Subscribe"): _subscribe,
    ("sns", "Unsubscribe"): _on_resource("sns:Unsubscribe", _subscription_topic),
    ("sns", "ListSubscriptionsByTopic"): _on_resource("sns:ListSubscriptionsByTopic", _topic),
    ("sqs", "CreateQueue"): _create_queue,
    ("sqs", "ListQueues"): _everywhere("sqs:ListQueues"),
    **{
        ("sqs", operation): _queue(f"sqs:{action}")
        for operation, action in {
            "GetQueueAttributes": "GetQueueAttributes",
            "SetQueueAttributes": "SetQueueAttributes",
            "TagQueue": "TagQueue",
            "ListQueueTags": "ListQueueTags",
            "ReceiveMessage": "ReceiveMessage",
            "DeleteMessage": "DeleteMessage",
            "DeleteMessageBatch": "DeleteMessage",
            "ChangeMessageVisibility": "ChangeMessageVisibility",
            "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
            "SendMessage": "SendMessage",
            "SendMessageBatch": "SendMessage",
            "DeleteQueue": "DeleteQueue",
        }.items()
    },
    ("ec2", "DescribeInstances"): _everywhere("ec2:DescribeInstances"),
    ("ec2", "RunInstances"): _run_instances,
    ("ec2", "StartInstances"): _on_instances("ec2:StartInstances"),
    ("ec2", "StopInstances"): _on_instances("ec2:StopInstances"),
    ("ec2", "TerminateInstances"): _on_instances("ec2:TerminateInstances"),
    ("ec2", "CreateTags"): _create_tags,
    ("monitoring", "GetMetricData"): _everywhere("cloudwatch:GetMetricData"),
    ("cloudwatch", "GetMetricData"): _everywhere("cloudwatch:GetMetricData"),
    ("secretsmanager", "GetSecretValue"): _secret,
}
