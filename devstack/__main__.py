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

from devstack import DEMO_USERS
from devstack.template import ROOT

# Where `run` tells `ec2-event` how to reach it; tests point it elsewhere.
STATE_FILE = Path(os.environ.get("DEVSTACK_STATE_FILE", ROOT / ".devstack" / "state.json"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the local stack and print where to connect")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host 0.0.0.0 (or ::): anyone who can reach it gets admin tokens",
    )
    run.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    run.add_argument("--demo-workers", type=int, default=3, choices=range(4))
    run.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    run.add_argument("--verbose", action="store_true", help="show the functions' logs")
    run.add_argument(
        "--ec2-delay-scale",
        type=float,
        default=1.0,
        help="multiply the simulated EC2 transition times (boot 6 s, stop 5 s, terminate 4 s)",
    )
    run.add_argument(
        "--schedule-speedup",
        type=float,
        default=1.0,
        help="run the template's schedules this many times faster (metrics every 60 s / N)",
    )
    token = commands.add_parser("token", help="print a bearer token of the local issuer")
    token.add_argument("--user", default="ada", help="username (demo: ada, max, alice, bob)")
    token.add_argument("--role", choices=("admin", "manager", "user"), help="default: by user")
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
        if args.command == "token":
            return print_token(args)
        return emit_event(args)
    except DevstackError as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 2


class DevstackError(Exception):
    """A problem the user can fix; printed without a traceback."""


def run_stack(args: argparse.Namespace) -> int:
    from devstack.ec2sim import Delays
    from devstack.fleet import seed_demo_fleet
    from devstack.fleetstack import FleetStack
    from devstack.stack import ACCOUNT_ID

    check_exposure(args.host, args.port, allow_remote=args.allow_remote)
    _check_port_free(args.host, args.port)
    stop = _stop_on_signal()  # before anything starts: a Ctrl-C at any point stops cleanly
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    quiet = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    print("starting the local stack (moto, template.yaml, handlers, relay)...", flush=True)
    workers: list[Any] = []

    def seed(stack: Any) -> None:
        workers.extend(seed_demo_fleet(stack.client("ec2"), stack.region, args.demo_workers))

    fleet = FleetStack(
        host=args.host,
        port=args.port,
        heartbeat_seconds=args.heartbeat,
        ec2_delays=Delays().scaled(args.ec2_delay_scale),
        schedule_speedup=args.schedule_speedup,
        overrides={} if args.verbose else quiet,
    )
    try:
        fleet.start(before_simulation=seed)
        assert fleet.stack is not None
        assert fleet.issuer is not None
        tokens = {user: fleet.issuer.token(user, role) for user, role in DEMO_USERS.items()}
        state = {
            "moto_endpoint": fleet.stack.endpoint,
            "region": fleet.stack.region,
            "account": ACCOUNT_ID,
            "url": fleet.url,
            "outputs": fleet.stack.outputs,
            "workers": [worker.__dict__ for worker in workers],
            "tokens": tokens,
        }
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(state, indent=2))
        STATE_FILE.chmod(0o600)
        _print_welcome(fleet.url, workers, tokens)
        while not stop.wait(1.0):
            pass
        print("\nstopping...", flush=True)
    finally:
        fleet.stop()
        STATE_FILE.unlink(missing_ok=True)
    return 0


def print_token(args: argparse.Namespace) -> int:
    state = _read_state()
    tokens: dict[str, str] = state.get("tokens", {})
    if args.user in tokens and args.role is None:
        print(tokens[args.user])
        return 0
    import httpx

    role = args.role or DEMO_USERS.get(args.user, "user")
    response = httpx.post(
        f"{state['url']}/auth/dev/token", json={"username": args.user, "role": role}, timeout=10
    )
    if response.status_code != 200:
        raise DevstackError(f"the development issuer said: {response.text}")
    print(response.json()["id_token"])
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


def _read_state() -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        raise DevstackError("the local stack is not running; start it with `make run`") from None
    return state


def check_exposure(host: str, port: int, *, allow_remote: bool) -> None:
    """Refuse a host others can reach unless `--allow-remote` is given; warn when it is.

    Refused by default, not only warned about: `/auth/dev/token` hands admin tokens to
    anyone who asks, and a warning scrolls away in the start-up output of a `--host 0.0.0.0`
    typed from habit (containers, VMs). Opening the stack to the network must be a choice.

    One address beyond loopback (a LAN IP) is refused either way: the API and the relay
    fetch the issuer's keys on loopback, which a stack bound to that address alone does not
    answer, so every sign-in would fail. A wildcard listens on loopback too.
    """
    from devstack.origin import WILDCARD_HOSTS, accepted_hosts, is_loopback

    if is_loopback(host):
        return
    remote = "bind to 0.0.0.0 with --allow-remote to reach it from other machines"
    exposed = (
        "anyone who can reach it can take admin tokens from /auth/dev/token "
        "and use the whole API and simulated fleet"
    )
    if not allow_remote:
        instead = "add --allow-remote" if host in WILDCARD_HOSTS else remote
        raise DevstackError(
            f"--host {host} would open the local stack to the network: {exposed}. "
            f"Keep the default 127.0.0.1, or {instead} (development only)."
        )
    if host not in WILDCARD_HOSTS:
        raise DevstackError(
            f"--host {host} cannot run the local stack: its API and relay fetch the "
            f"issuer's keys on this machine's loopback, which a stack listening on {host} "
            f"alone does not answer. Keep the default 127.0.0.1, or {remote}."
        )
    names = ", ".join(sorted(accepted_hosts(host, port)))
    print(
        f"WARNING: the local stack listens on {host}:{port}, beyond this machine: {exposed}. "
        f"It is for development only; never run it on a shared or public network. "
        f"It answers for Host: {names}.",
        file=sys.stderr,
        flush=True,
    )


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise DevstackError(
                f"port {port} on {host} is in use; pick another with `make run PORT=8081`"
            ) from None


def _print_welcome(url: str, workers: list[Any], tokens: dict[str, str]) -> None:
    lines = [
        "",
        "CML Fleet local stack is up.",
        f"  dashboard:     {url}/   (sign in as a demo user below)",
        f"  API docs:      {url}/api/docs",
        f'  event stream:  curl -N -H "Authorization: Bearer $TOKEN" {url}/api/events/stream',
        "  tokens:        make token AS=ada|max|alice|bob   (admin, manager, user, user)",
        "",
        "  export TOKEN=$(make -s token AS=ada)",
        f'  curl -H "Authorization: Bearer $TOKEN" {url}/api/workers',
        "  curl -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\",
        f'       -d \'{{"name": "my-lab"}}\' {url}/api/workers',
        "  make event    put a raw EC2 state-change event on the bus",
        "                (ARGS='--worker NAME --state STATE' to choose)",
        "",
        "demo workers:",
        *(f"  {w.name:<14} {w.worker_id}  {w.instance_id}  owner={w.owner}" for w in workers),
        "",
        "demo users: "
        + ", ".join(f"{user} ({role})" for user, role in DEMO_USERS.items() if user in tokens),
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
