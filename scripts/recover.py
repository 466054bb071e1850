"""Doing again what a dead-letter queue holds (ARCHITECTURE.md, failures and recovery).

    python scripts/recover.py outbox --stack cmlfleet-dev [--dry-run]
    python scripts/recover.py outbox --stack cmlfleet-dev --since 2026-11-30T10:00Z \
        --until 2026-11-30T10:30Z [--dry-run]
    python scripts/recover.py ec2-events --stack cmlfleet-dev [--dry-run]

`outbox` republishes, from the table's event log, the events of each failed stream batch
in PublisherDeadLetterQueue (or of a window given with --since/--until, no queue needed).
`ec2-events` runs each EC2 report in InstanceStateDeadLetterQueue through
InstanceStateFunction again. Messages are deleted only once their work is done.

`--stack` finds the queue, table, topic and function among the stack's resources; each
can be given instead (--queue-url, --table, --topic-arn, --function-name). The result is
printed as JSON, the logs go to stderr. Exit status 1 when messages stayed behind
(a failure or an unreadable message; never in a dry run), else 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "cmlfleet" / "python"))
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "recovery")

from aws_lambda_powertools import Logger

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.services import recovery

# An invoke waits for the function (30 s timeout in the template).
LAMBDA_CONFIG = Config(read_timeout=120, retries={"mode": "standard", "max_attempts": 3})


class InvocationFailedError(RuntimeError):
    """The function ran and raised (Lambda answered with `FunctionError`)."""


def lambda_invoker(client: Any, function_name: str) -> recovery.Invoke:
    """Call the deployed function synchronously; its `FunctionError` raises."""

    def invoke(event: dict[str, Any]) -> object:
        response = client.invoke(
            FunctionName=function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(event).encode(),
        )
        answer = response["Payload"].read().decode(errors="replace")
        if response.get("FunctionError"):
            raise InvocationFailedError(f"{response['FunctionError']}: {answer}")
        return answer

    return invoke


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stack", help="read the names below from this stack's resources")
    common.add_argument("--region", help="AWS region (else boto3's default)")
    common.add_argument("--dry-run", action="store_true", help="list what would be done")
    common.add_argument("--queue-url", help="the dead-letter queue")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    outbox = commands.add_parser("outbox", parents=[common], help="republish outbox events")
    outbox.add_argument("--table", help="the workers table (event log)")
    outbox.add_argument("--topic-arn", help="the domain events topic")
    outbox.add_argument("--since", type=parse_time, help="window start, instead of the DLQ")
    outbox.add_argument("--until", type=parse_time, help="window end (with --since)")
    outbox.add_argument("--margin-minutes", type=float, default=2.0, help="around arrivals")
    ec2 = commands.add_parser("ec2-events", parents=[common], help="run failed EC2 reports again")
    ec2.add_argument("--function-name", help="InstanceStateFunction's name")
    parsed = parser.parse_args(argv)
    if parsed.command == "outbox" and (parsed.since is None) != (parsed.until is None):
        parser.error("--since and --until go together")
    if parsed.command == "outbox" and parsed.since and parsed.until < parsed.since:
        parser.error("--until is before --since")
    return parsed


class Stack:
    """The physical names of the stack's resources, or those given on the command line."""

    def __init__(self, session: boto3.session.Session, name: str | None) -> None:
        self._session, self._name = session, name

    def resource(self, given: str | None, logical_id: str, flag: str) -> str:
        if given:
            return given
        if not self._name:
            raise SystemExit(f"recover: give {flag} or --stack")
        response = self._session.client("cloudformation").describe_stack_resource(
            StackName=self._name, LogicalResourceId=logical_id
        )
        return str(response["StackResourceDetail"]["PhysicalResourceId"])


def recover_outbox(
    args: argparse.Namespace, session: Any, stack: Stack
) -> recovery.RepublishResult:
    table = stack.resource(args.table, "WorkersTable", "--table")
    topic = stack.resource(args.topic_arn, "DomainEventsTopic", "--topic-arn")
    event_log = recovery.DynamoDbEventLog(table, session.client("dynamodb"))
    publisher = SnsEventPublisher(topic, session.client("sns"))
    if args.since is not None:
        window = recovery.Window(args.since, args.until)
        return recovery.republish_window(event_log, publisher, window, dry_run=args.dry_run)
    queue = stack.resource(args.queue_url, "PublisherDeadLetterQueue", "--queue-url")
    return recovery.republish_from_outbox(
        session.client("sqs"),
        queue,
        event_log,
        publisher,
        margin=timedelta(minutes=args.margin_minutes),
        dry_run=args.dry_run,
    )


def redrive_ec2_events(
    args: argparse.Namespace, session: Any, stack: Stack
) -> recovery.RedriveResult:
    queue = stack.resource(args.queue_url, "InstanceStateDeadLetterQueue", "--queue-url")
    function = stack.resource(args.function_name, "InstanceStateFunction", "--function-name")
    invoke = lambda_invoker(session.client("lambda", config=LAMBDA_CONFIG), function)
    return recovery.redrive_failed_events(
        session.client("sqs"), queue, invoke, dry_run=args.dry_run
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    Logger(service="recovery", logger_handler=logging.StreamHandler(sys.stderr))
    session = boto3.session.Session(region_name=args.region)
    stack = Stack(session, args.stack)
    if args.command == "outbox":
        result: recovery.RepublishResult | recovery.RedriveResult = recover_outbox(
            args, session, stack
        )
    else:
        result = redrive_ec2_events(args, session, stack)
    print(json.dumps(result.as_dict(), indent=2))
    return 1 if result.messages_kept and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
