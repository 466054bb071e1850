"""The API fuzzed from its own OpenAPI schema (schemathesis), in-process on moto.

Every operation gets valid and invalid requests, as an admin (who may change anything)
and as a user (who may see only their own workers), against one fleet that the fuzzing
keeps changing. No request may end in a 500, every refusal must be the documented JSON
error, and afterwards the fleet must be intact: every stored worker validates, and
listing and reading them still work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from cmlfleet.domain.worker import Worker
from cmlfleet.events.catalog import WorkerView
from cmlfleet.events.envelope import CloudEvent
from fleet_api.main import create_app
from tests.api.shared_fleet import Fleet, running_fleet
from tests.hypothesis_profiles import scaled

# The schema as the app publishes it; the requests go to the app of the `fleet` fixture.
schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_app(docs=True))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_x00=True
)
FUZZ_SETTINGS = settings(
    max_examples=scaled(0.1),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet() as fleet:
        yield fleet


# What each command needs to do more than refuse: the fuzzing terminates and stops
# workers as it goes, so one in that status is made again when none is found.
NEEDS = {"/start": "stopped", "/stop": "running", "/labs/refresh": "running"}


def aim_at_real_workers(case: Any, fleet: Fleet) -> None:
    """Most generated ids name nothing; point some at real workers and instances instead."""
    body = case.body
    if case.path == "/api/workers/import" and isinstance(body, dict):
        instance_id = body.get("instance_id")
        if isinstance(instance_id, str) and re.fullmatch(r"i-0+", instance_id):
            body["instance_id"] = fleet.launch_instance()  # one its owner let us import
    worker_id = (case.path_parameters or {}).get("worker_id")
    if not isinstance(worker_id, str) or not re.fullmatch(r"w-[0-9a-f]{1,2}", worker_id):
        return
    pick = int(worker_id[2:], 16)
    ids = fleet.worker_ids[pick % len(fleet.worker_ids) :] + fleet.worker_ids
    wanted = next((status for end, status in NEEDS.items() if case.path.endswith(end)), None)
    if wanted is not None:
        repository = fleet.container.commands._repository
        tried = [fleet.ready.get(wanted, ids[0]), *ids[:2]]
        found = next((i for i in tried if (w := repository.get(i)) and w.status == wanted), None)
        fleet.ready[wanted] = found or fleet.add_worker("revived", "alice", wanted)
        ids = [fleet.ready[wanted]]
    case.path_parameters["worker_id"] = ids[0]


def error_shape(response: Any) -> None:
    """Every refusal is `{"error": {"code", "message", ...}}` JSON, never a stack trace."""
    if response.status_code < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert "Traceback" not in response.text


def call_and_check(case: Any, fleet: Fleet, username: str, role: str) -> None:
    headers = fleet.headers(username, role)
    aim_at_real_workers(case, fleet)

    response = case.call(headers=headers, app=fleet.client.app)

    case.validate_response(response, checks=CHECKS, headers=headers)
    error_shape(response)
    if response.status_code == 201 and case.path.startswith("/api/workers"):
        fleet.worker_ids.append(response.json()["worker_id"])


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_request_of_an_admin_breaks_the_api(case: Any, fleet: Fleet) -> None:
    call_and_check(case, fleet, "ada", "admin")


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_request_of_a_user_breaks_the_api(case: Any, fleet: Fleet) -> None:
    call_and_check(case, fleet, "alice", "user")


def test_after_the_fuzzing_every_stored_worker_is_intact(fleet: Fleet) -> None:
    """Runs after the fuzzing above (same module fleet): nothing it did corrupted state."""
    items = fleet.aws.dynamodb.query(
        TableName=fleet.aws.table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "WORKER"}},
    )["Items"]
    workers = fleet.container.commands._repository.list_workers()  # validates every item

    assert len(workers) == len(items) >= 3
    for worker in workers:
        assert Worker.model_validate(worker.model_dump()) == worker
        got = fleet.client.get(f"/api/workers/{worker.worker_id}", headers=fleet.admin)
        assert got.status_code == 200, got.text
        assert WorkerView.model_validate(got.json()) == worker.view()
    listed = fleet.client.get("/api/workers", headers=fleet.admin)
    assert listed.status_code == 200
    assert {w["worker_id"] for w in listed.json()["workers"]} == {w.worker_id for w in workers}
    mine = fleet.client.get("/api/workers", headers=fleet.user("alice"))
    assert mine.status_code == 200
    assert {w["owner"] for w in mine.json()["workers"]} <= {"alice"}


def test_after_the_fuzzing_every_event_is_valid_and_versions_never_repeat(fleet: Fleet) -> None:
    items = fleet.aws.dynamodb.scan(
        TableName=fleet.aws.table_name,
        FilterExpression="kind = :event",
        ExpressionAttributeValues={":event": {"S": "event"}},
    )["Items"]
    events = [CloudEvent.from_json(item["event"]["S"]) for item in items]  # each one valid
    versions = {w.worker_id: w.version for w in fleet.container.commands._repository.list_workers()}

    assert events
    seen = [(event.subject, event.workerversion) for event in events]
    assert len(seen) == len(set(seen)), "two events of one worker share a version"
    assert all(version <= versions[worker_id] for worker_id, version in seen)
