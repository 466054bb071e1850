"""InstanceStateFunction: EC2 state-change notifications from EventBridge → worker status."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cmlfleet import bootstrap
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.events.envelope import CloudEvent, make_event
from devstack.lambdas import LambdaContext
from tests.conftest import EVENTS_DIR, FleetAws

ROOT = Path(__file__).resolve().parents[2]
HANDLER_FILE = ROOT / "functions" / "instance_state" / "app.py"
MODULE_NAME = "instance_state_app"
INSTANCE_ID = "i-0abcdef1234567890"

Handler = Callable[[Any, LambdaContext], dict[str, Any]]


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS_DIR / f"ec2_state_change_{name}.json").read_text())
    return loaded


def import_handler_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, HANDLER_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler(fleet_aws: FleetAws) -> Iterator[Handler]:
    """The function's handler, imported fresh while moto is active."""
    module = import_handler_module()
    yield module.lambda_handler
    sys.modules.pop(MODULE_NAME, None)


@pytest.fixture
def worker(fleet_aws: FleetAws) -> Worker:
    """A worker for the sample instance, saved as `provisioning` (EC2 has not reported)."""
    change = register_worker(
        name="lab-1",
        owner="alice",
        now=datetime(2026, 11, 30, 9, 59, 0, tzinfo=UTC),
        instance_id=INSTANCE_ID,
        instance_type="c5.2xlarge",
        region="us-east-1",
    )
    events = [
        make_event(payload, worker_id=change.worker.worker_id, version=1, owner="alice")
        for payload in change.events
    ]
    bootstrap.worker_repository().save(change.worker, events, expected_version=0)
    assert change.worker.status is WorkerStatus.PROVISIONING
    assert change.worker.ec2_state is None
    return change.worker


def stored_worker(worker: Worker) -> Worker:
    stored = bootstrap.worker_repository().get(worker.worker_id)
    assert stored is not None
    return stored


def stored_events(fleet_aws: FleetAws) -> list[CloudEvent]:
    """Every event in the table's event log, oldest first."""
    items: list[dict[str, Any]] = []
    for page in fleet_aws.dynamodb.get_paginator("scan").paginate(TableName=fleet_aws.table_name):
        items.extend(page["Items"])
    events = [
        CloudEvent.from_json(item["event"]["S"])
        for item in items
        if item["pk"]["S"].startswith("EVENTS#")
    ]
    return sorted(events, key=lambda event: event.id)


def state_events(fleet_aws: FleetAws) -> list[CloudEvent]:
    """The event log without the `worker.created` written when the worker was registered."""
    return [event for event in stored_events(fleet_aws) if event.type != "worker.created"]


def item_count(fleet_aws: FleetAws) -> int:
    return int(fleet_aws.dynamodb.scan(TableName=fleet_aws.table_name, Select="COUNT")["Count"])


# ---- applying state changes ------------------------------------------------------------


def test_a_pending_notification_makes_the_worker_pending(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    outcome = handler(sample("pending"), lambda_context)

    assert outcome == {
        "status": "applied",
        "instance_id": INSTANCE_ID,
        "state": "pending",
        "worker_id": worker.worker_id,
        "version": 2,
        "events": ["worker.status.updated"],
    }
    stored = stored_worker(worker)
    assert stored.status is WorkerStatus.PENDING
    assert stored.version == 2
    assert stored.ec2_state == "pending"
    assert stored.ec2_state_at == datetime(2026, 11, 30, 10, 0, 1, tzinfo=UTC)


def test_a_pending_notification_writes_a_status_updated_event(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("pending"), lambda_context)

    (event,) = state_events(fleet_aws)
    assert event.type == "worker.status.updated"
    assert event.subject == worker.worker_id
    assert event.workerversion == 2
    assert event.owner == "alice"
    assert event.source == "urn:cmlfleet"
    assert event.data["old_status"] == "provisioning"
    assert event.data["new_status"] == "pending"
    assert event.data["transition_started_at"] == "2026-11-30T10:00:01Z"


def test_a_running_notification_after_pending_makes_the_worker_running(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("pending"), lambda_context)

    outcome = handler(sample("running"), lambda_context)

    assert outcome["status"] == "applied"
    assert outcome["version"] == 3
    stored = stored_worker(worker)
    assert stored.status is WorkerStatus.RUNNING
    assert stored.transition_started_at is None
    running_event = state_events(fleet_aws)[-1]
    assert running_event.data["old_status"] == "pending"
    assert running_event.data["new_status"] == "running"
    assert running_event.workerversion == 3


def test_a_duplicate_delivery_returns_the_same_outcome_and_writes_no_second_event(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    first = handler(sample("pending"), lambda_context)
    items_after_first = item_count(fleet_aws)

    again = handler(sample("pending"), lambda_context)

    assert again == first
    assert again["status"] == "applied"
    assert item_count(fleet_aws) == items_after_first
    assert len(state_events(fleet_aws)) == 1
    assert stored_worker(worker).version == 2


def test_a_duplicate_delivered_after_a_newer_state_changes_nothing(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    first = handler(sample("running"), lambda_context)

    again = handler(sample("running"), lambda_context)

    assert again == first
    assert len(state_events(fleet_aws)) == 1


def test_an_older_event_does_not_overwrite_a_newer_state(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("pending"), lambda_context)
    handler(sample("running"), lambda_context)
    events_before = state_events(fleet_aws)
    late = sample("pending")
    late["id"] = "0d6c5b4a-3f2e-4d1c-8b0a-9f8e7d6c5b4a"
    late["time"] = "2026-11-30T10:00:00Z"

    outcome = handler(late, lambda_context)

    assert outcome["status"] == "unchanged"
    assert outcome["version"] == 3
    assert outcome["events"] == []
    stored = stored_worker(worker)
    assert stored.status is WorkerStatus.RUNNING
    assert stored.version == 3
    assert state_events(fleet_aws) == events_before


def test_a_pending_arriving_after_running_is_ignored_even_with_its_original_time(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("running"), lambda_context)

    outcome = handler(sample("pending"), lambda_context)

    assert outcome["status"] == "unchanged"
    assert stored_worker(worker).status is WorkerStatus.RUNNING
    assert len(state_events(fleet_aws)) == 1


def test_a_terminated_notification_terminates_the_worker_with_both_events(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("running"), lambda_context)

    outcome = handler(sample("terminated"), lambda_context)

    assert outcome["status"] == "applied"
    assert outcome["events"] == ["worker.status.updated", "worker.terminated"]
    stored = stored_worker(worker)
    assert stored.status is WorkerStatus.TERMINATED
    assert stored.terminated_at == datetime(2026, 11, 30, 11, 30, tzinfo=UTC)
    assert stored.terminated_by == "ec2"
    updated, terminated = state_events(fleet_aws)[-2:]
    assert updated.type == "worker.status.updated"
    assert updated.data["new_status"] == "terminated"
    assert terminated.type == "worker.terminated"
    assert terminated.data["terminated_by"] == "ec2"
    assert terminated.data["terminated_at"] == "2026-11-30T11:30:00Z"
    # Each event of the change has its own version, the last one the worker's.
    assert (updated.workerversion, terminated.workerversion) == (
        stored.version - 1,
        stored.version,
    )
    assert [e.type for e in state_events(fleet_aws)].count("worker.terminated") == 1


def test_a_terminated_worker_stays_terminated_when_a_later_event_arrives(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    handler(sample("terminated"), lambda_context)
    events_before = state_events(fleet_aws)
    zombie = sample("running")
    zombie["id"] = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"
    zombie["time"] = "2026-11-30T12:00:00Z"

    outcome = handler(zombie, lambda_context)

    assert outcome["status"] == "unchanged"
    assert stored_worker(worker).status is WorkerStatus.TERMINATED
    assert state_events(fleet_aws) == events_before


# ---- events that are not for a worker, or not valid ------------------------------------


def test_an_instance_that_is_not_a_worker_is_ignored_and_nothing_is_written(
    handler: Handler, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    outcome = handler(sample("running"), lambda_context)

    assert outcome == {"status": "ignored", "instance_id": INSTANCE_ID, "state": "running"}
    assert item_count(fleet_aws) == 0
    idempotency = fleet_aws.dynamodb.scan(TableName=fleet_aws.idempotency_table_name)
    assert idempotency["Count"] == 0


def test_another_instance_than_the_workers_is_ignored(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    stranger = sample("running")
    stranger["detail"]["instance-id"] = "i-0123456789abcdef0"
    items_before = item_count(fleet_aws)

    outcome = handler(stranger, lambda_context)

    assert outcome["status"] == "ignored"
    assert outcome["instance_id"] == "i-0123456789abcdef0"
    assert item_count(fleet_aws) == items_before
    assert stored_worker(worker) == worker


def without_detail() -> Any:
    event = sample("running")
    del event["detail"]
    return event


def with_bad_instance_id() -> Any:
    event = sample("running")
    event["detail"]["instance-id"] = "not-an-instance"
    return event


def with_wrong_detail_type() -> Any:
    event = sample("running")
    event["detail-type"] = "EBS Volume Notification"
    return event


def with_wrong_source() -> Any:
    event = sample("running")
    event["source"] = "aws.ebs"
    return event


def with_naive_time() -> Any:
    event = sample("running")
    event["time"] = "2026-11-30T10:00:05"
    return event


def without_state() -> Any:
    event = sample("running")
    del event["detail"]["state"]
    return event


MALFORMED: list[tuple[str, Callable[[], Any], str]] = [
    ("missing detail", without_detail, "detail"),
    ("bad instance id", with_bad_instance_id, "detail.instance-id"),
    ("wrong detail-type", with_wrong_detail_type, "detail-type"),
    ("wrong source", with_wrong_source, "source"),
    ("naive time", with_naive_time, "time"),
    ("missing state", without_state, "detail.state"),
    ("not a dict", lambda: ["not", "an", "event"], "event"),
    ("a string", lambda: "EC2 Instance State-change Notification", "event"),
    ("an empty dict", dict, "detail"),
]


@pytest.mark.parametrize(
    ("make_event_payload", "named"),
    [(maker, named) for _, maker, named in MALFORMED],
    ids=[label for label, _, _ in MALFORMED],
)
def test_a_malformed_event_is_rejected_with_a_reason_naming_the_problem(
    handler: Handler,
    worker: Worker,
    fleet_aws: FleetAws,
    lambda_context: LambdaContext,
    make_event_payload: Callable[[], Any],
    named: str,
) -> None:
    items_before = item_count(fleet_aws)

    outcome = handler(make_event_payload(), lambda_context)

    assert outcome["status"] == "rejected"
    assert set(outcome) == {"status", "reason"}
    assert outcome["reason"].startswith(named) or f"; {named}" in outcome["reason"]
    assert item_count(fleet_aws) == items_before
    assert stored_worker(worker) == worker


def test_a_rejected_event_does_not_mark_its_id_as_handled(
    handler: Handler, worker: Worker, fleet_aws: FleetAws, lambda_context: LambdaContext
) -> None:
    broken = copy.deepcopy(sample("pending"))
    broken["detail"]["instance-id"] = "nope"
    assert handler(broken, lambda_context)["status"] == "rejected"

    outcome = handler(sample("pending"), lambda_context)

    assert outcome["status"] == "applied"
    assert stored_worker(worker).status is WorkerStatus.PENDING
