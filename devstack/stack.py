"""The local stack: moto server, the template's stack, and the runner's stand-ins."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from devstack import awscalls, iampolicies
from devstack.dispatcher import (
    AsyncInvocation,
    RuleTapDrainer,
    ScheduleRunner,
    StreamPoller,
    Worker,
)
from devstack.lambdas import LocalFunction, load_function, shared_environment
from devstack.motofix import make_transactions_atomic
from devstack.template import LocalTemplate, localize

log = logging.getLogger("devstack")

STACK_NAME = "cmlfleet-local"
CODE_BUCKET = "cmlfleet-local-code"
ACCOUNT_ID = "123456789012"  # moto's default account

# Credentials and switches every process of the local stack gets.
LOCAL_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


# The template's required parameters, as the local stack fills them (the issuer's URL is
# replaced by the runner with the local origin's).
LOCAL_PARAMETERS = {
    "CmlAmiId": "ami-0c0ffee0c0ffee000",
    "OidcIssuer": "http://127.0.0.1:8080/auth",
    "OidcAudience": "cmlfleet-local",
    # Never a worker's private address: locally every CML API is on loopback (the
    # simulator's URL replaces this; port 1 refuses at once if nothing does).
    "CmlEndpointTemplate": "http://127.0.0.1:1/workers/{instance_id}",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalStack:
    """Starts and stops everything but the relay; `environment()` is what other processes need."""

    region: str = "us-east-1"
    stack_name: str = STACK_NAME
    moto_port: int = 0
    stream_poll_interval: float = 0.05
    overrides: dict[str, str] = field(default_factory=dict)  # win over the template's
    parameters: dict[str, str] = field(default_factory=lambda: dict(LOCAL_PARAMETERS))
    schedule_speedup: float = 1.0
    # Lambda waits 1 and then 2 minutes before retrying a failed asynchronous invocation;
    # the local stack keeps the count and the order, not the wait.
    async_retry_delays: tuple[float, ...] = (1.0, 2.0)
    run_schedules: bool = False
    before_schedule: dict[str, Any] = field(default_factory=dict)  # function id → hook
    schedules: dict[str, ScheduleRunner] = field(default_factory=dict)
    template: LocalTemplate | None = None
    endpoint: str = ""
    resources: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    functions: dict[str, LocalFunction] = field(default_factory=dict)
    call_log: Path | None = field(default_factory=lambda: _path_from(awscalls.LOG_VARIABLE))
    recording: awscalls.Recording | None = None
    _server: ThreadedMotoServer | None = None
    _workers: list[Worker] = field(default_factory=list)

    def start(self) -> LocalStack:
        self.start_moto()
        self.deploy()
        self._record_calls()
        self.start_dispatch()
        return self

    def start_moto(self) -> None:
        """The moto server, empty; this process's boto3 pointed at it."""
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        logging.getLogger("moto").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="Tried to parse AWS::")
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        port = self.moto_port or free_port()
        make_transactions_atomic()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(self.environment())
        self._configure_moto()

    def environment(self) -> dict[str, str]:
        """Variables that point boto3 (in any process) at this stack."""
        variables = dict(LOCAL_ENVIRONMENT)
        variables |= {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.endpoint:
            variables["AWS_ENDPOINT_URL"] = self.endpoint
        if self.recording is not None:
            variables[awscalls.RUN_VARIABLE] = str(self.recording.directory)
        return variables

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service, region_name=self.region, endpoint_url=self.endpoint
        )

    def deploy(self) -> None:
        """Create the template's stack in moto and fill the gaps it leaves."""
        template = self.create()
        self._load_functions(template)
        self._subscribe(template)

    def create(self) -> LocalTemplate:
        """Create the template's stack in moto (already running at `endpoint`), with its
        code and secrets; another stack of another name may already be there."""
        self.template = template = localize(
            bucket=self.code_bucket, parameters=self.parameters, stack_name=self.stack_name
        )
        self._upload_code(template.artifacts)
        arns = self._create_secrets(template)
        cloudformation = self.client("cloudformation")
        cloudformation.create_stack(
            StackName=self.stack_name,
            TemplateBody=_with_secret_arns(json.dumps(template.cloudformation), arns),
            Parameters=[
                {"ParameterKey": key, "ParameterValue": value}
                for key, value in self.parameters.items()
            ],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        stack = _wait_for_stack(cloudformation, self.stack_name)
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        paginator = cloudformation.get_paginator("list_stack_resources")
        for page in paginator.paginate(StackName=self.stack_name):
            for summary in page["StackResourceSummaries"]:
                self.resources[summary["LogicalResourceId"]] = summary["PhysicalResourceId"]
        return template

    @property
    def code_bucket(self) -> str:
        return CODE_BUCKET if self.stack_name == STACK_NAME else f"{self.stack_name}-code"

    def start_dispatch(self) -> None:
        assert self.template is not None
        sqs = self.client("sqs")
        for tap in self.template.taps:
            self._workers.append(
                RuleTapDrainer(
                    sqs, self.resources[tap.queue_id], self.invocation(tap.function_id), ACCOUNT_ID
                )
            )
        dynamodb, streams = self.client("dynamodb"), self.client("dynamodbstreams")
        for mapping in self.template.streams:
            table = dynamodb.describe_table(TableName=self.resources[mapping.table_id])["Table"]
            self._workers.append(
                StreamPoller(
                    streams,
                    table["LatestStreamArn"],
                    self.functions[mapping.function_id],
                    region=self.region,
                    batch_size=mapping.batch_size,
                    max_retries=mapping.max_retries,
                    on_failure=self._dead_letter(mapping.dlq_id),
                    poll_interval=self.stream_poll_interval,
                )
            )
        for worker in self._workers:
            worker.start()
        if self.run_schedules:
            self.start_schedules()

    def start_schedules(self) -> None:
        """Fire each scheduled function now, then on its schedule (sped up)."""
        assert self.template is not None
        for schedule in self.template.schedules:
            runner = ScheduleRunner(
                self.invocation(schedule.function_id),
                schedule.expression,
                speedup=self.schedule_speedup,
                before_run=self.before_schedule.get(schedule.function_id),
            )
            self.schedules[schedule.function_id] = runner
            self._workers.append(runner)
            runner.start()

    def invocation(self, function_id: str) -> AsyncInvocation:
        """The function invoked asynchronously, with the template's settings for failures."""
        assert self.template is not None
        config = self.template.async_config(function_id)
        destination = None
        if config.on_failure_id is not None:
            sqs, queue_url = self.client("sqs"), self.resources[config.on_failure_id]

            def destination(record: dict[str, Any]) -> None:
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(record))

        return AsyncInvocation(
            self.functions[function_id],
            config,
            destination=destination,
            retry_delays=self.async_retry_delays,
        )

    def secret_value(self, logical_id: str) -> dict[str, Any]:
        """A secret the local stack made, as JSON (e.g. the CML credentials)."""
        assert self.template is not None
        secret = next(s for s in self.template.secrets if s.logical_id == logical_id)
        value = self.client("secretsmanager").get_secret_value(SecretId=secret.name)
        parsed: dict[str, Any] = json.loads(value["SecretString"])
        return parsed

    def stop(self) -> None:
        if self.recording is not None:
            awscalls.stop()
        for worker in self._workers:
            worker.stop()
        for worker in self._workers:
            worker.join(timeout=5)
        self._workers.clear()
        if self._server is not None:
            try:
                self._moto_api("reset", None)  # leave no state behind for the next stack
            except OSError:
                log.warning("could not reset moto at stop")
            self._server.stop()
            self._server = None

    def _configure_moto(self) -> None:
        # moto keeps its state per process, not per server: start from a clean slate.
        self._moto_api("reset", None)
        self._moto_api("config", {"lambda": {"use_docker": False}})

    def _moto_api(self, path: str, body: dict[str, Any] | None) -> None:
        import urllib.request

        request = urllib.request.Request(  # noqa: S310 - our own loopback moto server
            f"{self.endpoint}/moto-api/{path}",
            data=json.dumps(body).encode() if body is not None else b"",
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    def _upload_code(self, artifacts: dict[str, Path]) -> None:
        s3 = self.client("s3")
        s3.create_bucket(Bucket=self.code_bucket)
        for key, directory in artifacts.items():
            s3.put_object(Bucket=self.code_bucket, Key=key, Body=_zip_directory(directory))

    def _record_calls(self) -> None:
        """Record the deployables' AWS calls, beside the policies their roles have."""
        if self.call_log is None or self.template is None:
            return
        directory = self.call_log / f"run-{uuid.uuid4().hex[:12]}"
        directory.mkdir(parents=True)
        policies = iampolicies.snapshot(
            self.template.cloudformation, self.resources, self.client("iam")
        )
        iampolicies.write(directory / awscalls.POLICIES_FILE, policies)
        self.recording = awscalls.Recording(directory, awscalls.Lookup(self.client), None)
        awscalls.start(self.recording)

    def _create_secrets(self, template: LocalTemplate) -> dict[str, str]:
        """moto's CloudFormation skips secrets: make each, generating as the template asks.
        Returns each secret's ARN by the name the template now refers to it by."""
        secrets = self.client("secretsmanager")
        arns: dict[str, str] = {}
        for secret in template.secrets:
            generate = secret.properties.get("GenerateSecretString")
            if generate:
                value = json.loads(generate.get("SecretStringTemplate", "{}"))
                value[generate["GenerateStringKey"]] = secrets.get_random_password(
                    PasswordLength=int(generate.get("PasswordLength", 24)),
                    ExcludePunctuation=bool(generate.get("ExcludePunctuation", False)),
                )["RandomPassword"]
                text = json.dumps(value)
            else:
                text = str(secret.properties.get("SecretString", ""))
            created = secrets.create_secret(Name=secret.name, SecretString=text)
            arns[secret.name] = created["ARN"]
        return arns

    def _load_functions(self, template: LocalTemplate) -> None:
        lambda_client = self.client("lambda")
        configurations = {
            logical_id: lambda_client.get_function_configuration(
                FunctionName=self.resources[logical_id]
            )
            for logical_id in template.functions
        }
        os.environ.update(
            shared_environment(
                {
                    logical_id: config.get("Environment", {}).get("Variables", {})
                    for logical_id, config in configurations.items()
                }
            )
        )
        os.environ.update(LOCAL_ENVIRONMENT | self.overrides)
        for logical_id, source in template.functions.items():
            self.functions[logical_id] = load_function(
                source, configurations[logical_id], self.overrides
            )

    def _subscribe(self, template: LocalTemplate) -> None:
        """moto skips AWS::SNS::Subscription; make each one through the API."""
        sns = self.client("sns")
        for properties in template.subscriptions:
            sns.subscribe(
                TopicArn=self._resolve(properties["TopicArn"]),
                Protocol=properties["Protocol"],
                Endpoint=self._resolve(properties["Endpoint"]),
                Attributes={
                    k: str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in properties.items()
                    if k in {"RawMessageDelivery", "FilterPolicy", "RedrivePolicy"}
                },
            )

    def _resolve(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if "Ref" in value:
            return self.resources[value["Ref"]]
        logical_id, attribute = value["Fn::GetAtt"]
        if attribute == "Arn" and self.resources[logical_id].startswith("https://sqs"):
            name = self.resources[logical_id].rsplit("/", 1)[-1]
            return f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{name}"
        raise ValueError(f"cannot resolve {value!r} locally")

    def _dead_letter(self, dlq_id: str | None) -> Any:
        if dlq_id is None:
            return None
        sqs, queue_url = self.client("sqs"), self.resources[dlq_id]

        def send(shard_id: str, records: list[dict[str, Any]]) -> None:
            record = stream_failure(shard_id, records)
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(record))

        return send


def _with_secret_arns(template_body: str, arns: dict[str, str]) -> str:
    """A secret's `Ref` is its ARN on AWS (what the policies name): so it is here too."""
    for name, arn in arns.items():
        template_body = template_body.replace(json.dumps(name), json.dumps(arn))
    return template_body


def _path_from(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def stream_failure(shard_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """What Lambda sends a stream mapping's OnFailure destination: where the failed batch
    was in the stream and when it arrived, not its records (they expire with the stream)."""
    first, last = records[0], records[-1]

    def arrival(record: dict[str, Any]) -> str:
        created = float(record["dynamodb"].get("ApproximateCreationDateTime", time.time()))
        moment = datetime.fromtimestamp(created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": "",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 1,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": ""},
        "version": "1.0",
        "timestamp": now,
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first["dynamodb"]["SequenceNumber"],
            "endSequenceNumber": last["dynamodb"]["SequenceNumber"],
            "approximateArrivalOfFirstRecord": arrival(first),
            "approximateArrivalOfLastRecord": arrival(last),
            "batchSize": len(records),
            "streamArn": first.get("eventSourceARN", ""),
        },
    }


def _wait_for_stack(cloudformation: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            return stack
        if (
            status.endswith("FAILED")
            or status.startswith("ROLLBACK")
            or time.monotonic() > deadline
        ):
            raise RuntimeError(
                f"local stack did not come up: {status} {stack.get('StackStatusReason', '')}"
            )
        time.sleep(0.1)


def _zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()
