"""`python -m devstack`: run the local stack, or put an EC2 event on its bus."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devstack.template import ROOT

# Where `run` tells `ec2-event` how to reach it; tests point it elsewhere.
STATE_FILE = Path(os.environ.get("DEVSTACK_STATE_FILE", ROOT / ".devstack" / "state.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the local stack and print where to connect")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    run.add_argument("--demo-workers", type=int, default=3, choices=range(4))
    run.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    run.add_argument("--verbose", action="store_true", help="show the functions' logs")
    event = commands.add_parser("ec2-event", help="put an EC2 state-change event on the bus")
    event.add_argument("--worker", help="worker id, name or instance id (default: first demo)")
    event.add_argument(
        "--state",
        choices=("pending", "running", "stopping", "stopped", "shutting-down", "terminated"),
        help="EC2 state to report (default: the next one in the instance's lifecycle)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_stack(args)
        return emit_event(args)
    except DevstackError as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 2


class DevstackError(Exception):
    """A problem the user can fix; printed without a traceback."""


def run_stack(args: argparse.Namespace) -> int:
    from devstack.fleet import seed_demo_fleet
    from devstack.relayproc import RelayProcess
    from devstack.stack import ACCOUNT_ID, LocalStack, free_port

    _check_port_free(args.host, args.port)
    stop = _stop_on_signal()  # before anything starts: a Ctrl-C at any point stops cleanly
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    print("starting the local stack (moto, template.yaml, handlers)...", flush=True)
    stack = LocalStack(moto_port=free_port(), overrides={} if args.verbose else quiet).start()
    relay = None
    try:
        if stop.is_set():
            return 0
        workers = seed_demo_fleet(stack.client("ec2"), stack.region, args.demo_workers)
        relay_env = stack.environment() | {
            "TOPIC_ARN": stack.outputs["DomainEventsTopicArn"],
            "RELAY_DLQ_ARN": stack.outputs["RelayDeadLetterQueueArn"],
            "RELAY_POLL_WAIT_SECONDS": "2",
            "HEARTBEAT_SECONDS": str(args.heartbeat),
        }
        relay = RelayProcess(relay_env, port=args.port, host=args.host).start()
        state = {
            "moto_endpoint": stack.endpoint,
            "region": stack.region,
            "account": ACCOUNT_ID,
            "relay_url": relay.url,
            "outputs": stack.outputs,
            "workers": [worker.__dict__ for worker in workers],
        }
        STATE_FILE.parent.mkdir(exist_ok=True)
        STATE_FILE.write_text(json.dumps(state, indent=2))
        _print_welcome(relay.url, workers)
        while not stop.wait(1.0):
            pass
        print("\nstopping...", flush=True)
    finally:
        if relay is not None:
            relay.stop()
        stack.stop()
        STATE_FILE.unlink(missing_ok=True)
    return 0


def emit_event(args: argparse.Namespace) -> int:
    import boto3

    from devstack.ec2events import NEXT_STATE, put_state_change

    state = _read_state()
    session = boto3.session.Session()

    def client(service: str) -> Any:
        return session.client(
            service,
            region_name=state["region"],
            endpoint_url=state["moto_endpoint"],
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 - moto
        )

    worker = _find_worker(client("dynamodb"), state, args.worker)
    new_state = args.state or NEXT_STATE.get(worker.get("ec2_state") or "running")
    if new_state is None:
        raise DevstackError(f"worker {worker['worker_id']} is terminated; pass --state to force")
    _mirror_in_ec2(client("ec2"), worker["instance_id"], new_state)
    event_id = put_state_change(
        client("events"),
        worker["instance_id"],
        new_state,
        region=state["region"],
        account=state["account"],
    )
    print(
        f"put EC2 event {event_id}: {worker['instance_id']} ({worker['name']}) "
        f"{worker.get('ec2_state')} -> {new_state}"
    )
    return 0


def _find_worker(dynamodb: Any, state: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    table = state["outputs"]["WorkersTableName"]
    items = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "WORKER"}},
    )["Items"]
    workers = [{k: TypeDeserializer().deserialize(v) for k, v in i.items()} for i in items]
    if not workers:
        raise DevstackError("the local stack has no workers")
    if wanted is None:
        first = state["workers"][0]["worker_id"] if state["workers"] else workers[0]["worker_id"]
        wanted = first
    for worker in workers:
        if wanted in (worker["worker_id"], worker.get("name"), worker.get("instance_id")):
            return worker
    names = ", ".join(f"{w['name']} ({w['worker_id']})" for w in workers)
    raise DevstackError(f"no worker {wanted!r}; known: {names}")


def _mirror_in_ec2(ec2: Any, instance_id: str, state: str) -> None:
    """Keep moto's instance in step with the reported state (moto changes state instantly)."""
    if state in ("stopping", "stopped"):
        ec2.stop_instances(InstanceIds=[instance_id])
    elif state in ("pending", "running"):
        ec2.start_instances(InstanceIds=[instance_id])
    elif state in ("shutting-down", "terminated"):
        ec2.terminate_instances(InstanceIds=[instance_id])


def _read_state() -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        raise DevstackError("the local stack is not running; start it with `make run`") from None
    return state


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise DevstackError(
                f"port {port} on {host} is in use; pick another with `make run PORT=8081`"
            ) from None


def _print_welcome(url: str, workers: list[Any]) -> None:
    lines = [
        "",
        "CML Fleet local stack is up.",
        f"  event stream:  curl -N {url}/api/events/stream",
        f"  relay health:  {url}/api/events/health",
        "  put an event:  make event",
        "                 make event ARGS='--worker cml-lab-b --state stopping'",
        "",
        "demo workers:",
        *(f"  {w.name:<14} {w.worker_id}  {w.instance_id}  owner={w.owner}" for w in workers),
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def _stop_on_signal() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


if __name__ == "__main__":
    sys.exit(main())
