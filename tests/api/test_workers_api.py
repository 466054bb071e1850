"""The workers API: who may see and do what, what each command changes, and how it fails."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from httpx import Response

import cmlfleet
from cmlfleet.access import MASKED_FOR_USERS
from cmlfleet.adapters.ec2 import OWNER_TAG, STACK_TAG, WORKER_ID_TAG, CloudError
from cmlfleet.adapters.repository import EVENTS_PK_PREFIX
from cmlfleet.domain.worker import Worker
from cmlfleet.identity import Principal, Role
from tests.api.conftest import AMI, STACK, Api

UNKNOWN_WORKER = "w-0000000000000000000f"
UNKNOWN_INSTANCE = "i-0123456789abcdef0"
DEFAULT_INSTANCE_TYPE = "c5.2xlarge"  # the api fixture's LaunchDefaults
REGION = "us-east-1"


# ---- helpers ---------------------------------------------------------------------------
def error_of(response: Response, status: int) -> dict[str, Any]:
    """The `error` object of a JSON error response with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def events(api: Api, worker_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """The CloudEvents in the table's event log (the outbox), oldest first."""
    found: list[dict[str, Any]] = []
    paginator = api.aws.dynamodb.get_paginator("scan")
    for page in paginator.paginate(
        TableName=api.aws.table_name,
        FilterExpression="#kind = :event",
        ExpressionAttributeNames={"#kind": "kind"},
        ExpressionAttributeValues={":event": {"S": "event"}},
    ):
        for item in page["Items"]:
            assert item["pk"]["S"].startswith(EVENTS_PK_PREFIX)
            found.append(json.loads(item["event"]["S"]))
    found.sort(key=lambda event: event["id"])
    return [
        event
        for event in found
        if (worker_id is None or event["subject"] == worker_id)
        and (kind is None or event["type"] == kind)
    ]


def stored(api: Api, worker_id: str) -> Worker:
    """The worker as the table holds it, read past the API."""
    worker = api.container.commands._repository.get(worker_id)
    assert worker is not None, worker_id
    return worker


def instance(api: Api, instance_id: str) -> dict[str, Any]:
    reservations = api.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    found: dict[str, Any] = reservations[0]["Instances"][0]
    return found


def instance_tags(api: Api, instance_id: str) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance(api, instance_id).get("Tags", [])}


def instance_count(api: Api) -> int:
    reservations = api.ec2.describe_instances()["Reservations"]
    return sum(len(reservation["Instances"]) for reservation in reservations)


def listed(api: Api, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    response = api.client.get(f"/api/workers{query}", headers=headers)
    assert response.status_code == 200, response.text
    workers: list[dict[str, Any]] = response.json()["workers"]
    return workers


def running_worker(api: Api, name: str = "lab", owner: str = "alice") -> dict[str, Any]:
    """A worker EC2 has reported running (version 2)."""
    worker = api.create_worker(name, owner)
    api.set_status(worker["worker_id"], "running")
    return api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.admin).json()


def stopped_worker(api: Api, name: str = "lab", owner: str = "alice") -> dict[str, Any]:
    """A worker whose instance is stopped, as EC2 reported it (version 2)."""
    worker = api.create_worker(name, owner)
    api.ec2.stop_instances(InstanceIds=[worker["instance_id"]])
    api.set_status(worker["worker_id"], "stopped")
    return api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.admin).json()


def assert_masked(view: dict[str, Any]) -> None:
    for field in MASKED_FOR_USERS:
        assert view[field] is None, field
    assert view["tags"] == {}


def assert_unmasked(view: dict[str, Any], worker: dict[str, Any]) -> None:
    for field in (*MASKED_FOR_USERS, "tags"):
        assert view[field] == worker[field], field
    assert view["instance_id"] is not None
    assert view["tags"]


def refuse(*_: Any, **__: Any) -> None:
    raise CloudError("UnauthorizedOperation", "You are not authorized to perform this operation.")


# ---- health and unknown routes -------------------------------------------------------------
def test_health_answers_without_a_token(api: Api) -> None:
    response = api.client.get("/api/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": cmlfleet.__version__}


def test_health_does_not_look_at_the_token(api: Api) -> None:
    response = api.client.get("/api/health", headers={"Authorization": "Bearer garbage"})

    assert response.status_code == 200


def test_an_unknown_route_is_a_json_404(api: Api) -> None:
    error = error_of(api.client.get("/api/nothing-here", headers=api.admin), 404)

    assert error["code"] == "not_found"


def test_a_wrong_method_is_a_json_405(api: Api) -> None:
    error = error_of(api.client.put("/api/workers", headers=api.admin), 405)

    assert error["code"] == "method_not_allowed"


# ---- GET /api/workers ----------------------------------------------------------------------
def test_listing_workers_needs_a_token(api: Api) -> None:
    error = error_of(api.client.get("/api/workers"), 401)

    assert error["code"] == "unauthorized"


def test_an_empty_fleet_lists_no_workers(api: Api) -> None:
    assert listed(api, api.admin) == []


def test_an_admin_lists_every_worker_sorted_by_name_with_its_version(api: Api) -> None:
    beta = api.create_worker("beta", "alice")
    alpha = api.create_worker("Alpha", "bob")
    gamma = api.create_worker("gamma", "carol")

    workers = listed(api, api.admin)

    assert [w["name"] for w in workers] == ["Alpha", "beta", "gamma"]
    assert [w["version"] for w in workers] == [1, 1, 1]
    for view, created in zip(workers, (alpha, beta, gamma), strict=True):
        assert view == created


def test_a_manager_lists_every_worker_unmasked(api: Api) -> None:
    alices = api.create_worker("lab-a", "alice")
    bobs = api.create_worker("lab-b", "bob")

    workers = listed(api, api.manager)

    assert [w["worker_id"] for w in workers] == [alices["worker_id"], bobs["worker_id"]]
    assert_unmasked(workers[0], alices)
    assert_unmasked(workers[1], bobs)


def test_a_user_lists_only_their_own_workers_with_aws_fields_masked(api: Api) -> None:
    alices = api.create_worker("lab-a", "alice")
    api.create_worker("lab-b", "bob")

    workers = listed(api, api.user("alice"))

    assert [w["worker_id"] for w in workers] == [alices["worker_id"]]
    assert workers[0]["name"] == "lab-a"
    assert workers[0]["status"] == "provisioning"
    assert workers[0]["version"] == 1
    assert_masked(workers[0])


def test_a_user_who_owns_nothing_lists_nothing(api: Api) -> None:
    api.create_worker("lab-a", "alice")

    assert listed(api, api.user("mallory")) == []


def test_the_list_can_be_filtered_by_status(api: Api) -> None:
    running = running_worker(api, "lab-running")
    api.create_worker("lab-provisioning")

    workers = listed(api, api.admin, "?status=running")

    assert [w["worker_id"] for w in workers] == [running["worker_id"]]


def test_the_list_can_be_filtered_by_owner(api: Api) -> None:
    api.create_worker("lab-a", "alice")
    bobs = api.create_worker("lab-b", "bob")

    workers = listed(api, api.manager, "?owner=bob")

    assert [w["worker_id"] for w in workers] == [bobs["worker_id"]]


def test_both_filters_apply_together(api: Api) -> None:
    running_worker(api, "lab-a", "alice")
    bobs_running = running_worker(api, "lab-b", "bob")
    api.create_worker("lab-c", "bob")

    workers = listed(api, api.admin, "?status=running&owner=bob")

    assert [w["worker_id"] for w in workers] == [bobs_running["worker_id"]]


def test_a_user_filtering_by_another_owner_sees_nothing(api: Api) -> None:
    api.create_worker("lab-a", "alice")
    api.create_worker("lab-b", "bob")

    assert listed(api, api.user("alice"), "?owner=bob") == []


def test_an_unknown_status_filter_is_refused(api: Api) -> None:
    error = error_of(api.client.get("/api/workers?status=sleeping", headers=api.admin), 422)

    assert error["code"] == "invalid_request"
    assert [d["field"] for d in error["details"]] == ["status"]


# ---- GET /api/workers/{id} -------------------------------------------------------------------
@pytest.mark.parametrize("role", ["admin", "manager"])
def test_admins_and_managers_get_any_worker_unmasked(api: Api, role: str) -> None:
    worker = api.create_worker("lab", "alice")

    response = api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.headers("x", role))

    assert response.status_code == 200
    assert response.json() == worker
    assert_unmasked(response.json(), worker)


def test_a_user_gets_their_own_worker_masked(api: Api) -> None:
    worker = api.create_worker("lab", "alice")

    response = api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.user("alice"))

    assert response.status_code == 200
    view = response.json()
    assert view["worker_id"] == worker["worker_id"]
    assert view["owner"] == "alice"
    assert view["version"] == worker["version"]
    assert_masked(view)


def test_a_users_view_hides_the_private_ip_an_admin_sees(api: Api) -> None:
    worker = api.create_worker("lab", "alice")
    private_ip = instance(api, worker["instance_id"]).get("PrivateIpAddress")
    path = f"/api/workers/{worker['worker_id']}"

    assert private_ip
    assert api.client.get(path, headers=api.admin).json()["private_ip"] == private_ip
    assert api.client.get(path, headers=api.user("alice")).json()["private_ip"] is None


def test_another_users_worker_does_not_exist_for_a_user(api: Api) -> None:
    worker = api.create_worker("lab", "alice")

    error = error_of(
        api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.user("bob")), 404
    )

    assert error == {"code": "worker_not_found", "message": f"no worker {worker['worker_id']}"}


def test_an_unknown_worker_is_not_found(api: Api) -> None:
    error = error_of(api.client.get(f"/api/workers/{UNKNOWN_WORKER}", headers=api.admin), 404)

    assert error == {"code": "worker_not_found", "message": f"no worker {UNKNOWN_WORKER}"}


@pytest.mark.parametrize(
    "worker_id",
    ["W-0123", "w-XYZ", "w-", "w-" + "a" * 41, "i-0123456789abcdef0", "import"],
)
def test_a_malformed_worker_id_is_refused(api: Api, worker_id: str) -> None:
    error = error_of(api.client.get(f"/api/workers/{worker_id}", headers=api.admin), 422)

    assert error["code"] == "invalid_request"
    assert [d["field"] for d in error["details"]] == ["worker_id"]


# ---- POST /api/workers -----------------------------------------------------------------------
def test_an_admin_creates_a_worker_that_is_provisioning_at_version_1(api: Api) -> None:
    response = api.client.post(
        "/api/workers", json={"name": "lab-1", "owner": "alice"}, headers=api.admin
    )

    assert response.status_code == 201, response.text
    worker = response.json()
    assert worker["worker_id"].startswith("w-")
    assert worker["name"] == "lab-1"
    assert worker["owner"] == "alice"
    assert worker["status"] == "provisioning"
    assert worker["version"] == 1
    assert worker["ami_id"] == AMI
    assert worker["instance_type"] == DEFAULT_INSTANCE_TYPE
    assert worker["region"] == REGION
    assert worker["transition_started_at"] == worker["created_at"]
    assert worker["terminated_at"] is None
    assert api.client.get(f"/api/workers/{worker['worker_id']}", headers=api.admin).json() == worker


def test_creating_a_worker_launches_a_tagged_instance_with_its_role_from_the_cml_ami(
    api: Api,
) -> None:
    worker = api.create_worker("lab-1", "alice")

    launched = instance(api, worker["instance_id"])

    assert launched["ImageId"] == AMI
    assert launched["InstanceType"] == DEFAULT_INSTANCE_TYPE
    assert launched["Monitoring"]["State"] == "disabled"  # basic: detailed costs $2.10/month
    assert launched["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    profile = api.container.commands._launch.instance_profile_arn
    assert launched["IamInstanceProfile"]["Arn"] == profile  # the CloudWatch agent's role
    assert instance_tags(api, worker["instance_id"]) == {
        "Name": "lab-1",
        OWNER_TAG: "alice",
        WORKER_ID_TAG: worker["worker_id"],
        STACK_TAG: STACK,
    }
    assert worker["tags"] == instance_tags(api, worker["instance_id"])
    assert instance_count(api) == 1


def test_creating_a_worker_records_one_worker_created_event(api: Api) -> None:
    worker = api.create_worker("lab-1", "alice")

    recorded = events(api, worker["worker_id"])

    assert [e["type"] for e in recorded] == ["worker.created"]
    assert recorded[0]["workerversion"] == 1
    assert recorded[0]["owner"] == "alice"
    assert recorded[0]["source"] == "urn:cmlfleet:test"
    assert recorded[0]["data"]["worker"] == worker


def test_a_worker_created_without_an_owner_belongs_to_the_admin(api: Api) -> None:
    response = api.client.post("/api/workers", json={"name": "mine"}, headers=api.admin)

    assert response.status_code == 201
    assert response.json()["owner"] == "ada"
    assert instance_tags(api, response.json()["instance_id"])[OWNER_TAG] == "ada"


def test_a_worker_may_ask_for_another_instance_type(api: Api) -> None:
    response = api.client.post(
        "/api/workers", json={"name": "big", "instance_type": "m5zn.metal"}, headers=api.admin
    )

    assert response.status_code == 201
    assert response.json()["instance_type"] == "m5zn.metal"
    assert instance(api, response.json()["instance_id"])["InstanceType"] == "m5zn.metal"


def test_surrounding_whitespace_is_trimmed_from_the_name(api: Api) -> None:
    response = api.client.post("/api/workers", json={"name": "  lab-1 \t"}, headers=api.admin)

    assert response.status_code == 201
    assert response.json()["name"] == "lab-1"


@pytest.mark.parametrize("role", ["manager", "user"])
def test_only_an_admin_may_create_a_worker(api: Api, role: str) -> None:
    response = api.client.post(
        "/api/workers", json={"name": "lab"}, headers=api.headers("someone", role)
    )

    error = error_of(response, 403)
    assert error == {"code": "forbidden", "message": f"role {role} may not create"}
    assert instance_count(api) == 0
    assert listed(api, api.admin) == []
    assert events(api) == []


INVALID_CREATE_BODIES = [
    pytest.param({}, "name", id="missing name"),
    pytest.param({"owner": "alice"}, "name", id="owner but no name"),
    pytest.param({"name": ""}, "name", id="empty name"),
    pytest.param({"name": "   "}, "name", id="blank name"),
    pytest.param({"name": "x" * 65}, "name", id="name too long"),
    pytest.param({"name": "lab\x00one"}, "name", id="NUL in name"),
    pytest.param({"name": "lab\none"}, "name", id="newline in name"),
    pytest.param({"name": "lab\x1b[2Jone"}, "name", id="escape in name"),
    pytest.param({"name": "lab\x7f"}, "name", id="DEL in name"),
    pytest.param({"name": "lab", "size": "xl"}, "size", id="unknown field"),
    pytest.param({"name": 42}, "name", id="name is a number"),
    pytest.param({"name": ["lab"]}, "name", id="name is a list"),
    pytest.param({"name": None}, "name", id="name is null"),
    pytest.param({"name": "lab", "owner": 7}, "owner", id="owner is a number"),
    pytest.param({"name": "lab", "owner": ""}, "owner", id="empty owner"),
    pytest.param({"name": "lab", "owner": "bob\tsmith"}, "owner", id="tab in owner"),
    pytest.param({"name": "lab", "owner": "o" * 129}, "owner", id="owner too long"),
    pytest.param({"name": "lab", "instance_type": 5}, "instance_type", id="type is a number"),
    pytest.param({"name": "lab", "instance_type": "M5.LARGE"}, "instance_type", id="upper case"),
    pytest.param({"name": "lab", "instance_type": "m5"}, "instance_type", id="no size"),
    pytest.param({"name": "lab", "instance_type": "m5.large;x"}, "instance_type", id="junk"),
    pytest.param(["lab"], "body", id="array body"),
    pytest.param("lab", "body", id="string body"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_CREATE_BODIES)
def test_a_malformed_create_body_is_refused_and_launches_nothing(
    api: Api, body: Any, field: str
) -> None:
    error = error_of(api.client.post("/api/workers", json=body, headers=api.admin), 422)

    assert error["code"] == "invalid_request"
    assert error["message"] == "the request is not valid"
    assert field in [d["field"] for d in error["details"]]
    assert all(d["problem"] for d in error["details"])
    assert instance_count(api) == 0
    assert listed(api, api.admin) == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"not json", "application/json", id="not JSON"),
        pytest.param(b'{"name": "lab"', "application/json", id="truncated JSON"),
        pytest.param(b"", "application/json", id="empty body"),
        pytest.param(b"name=lab", "application/x-www-form-urlencoded", id="a form"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(
    api: Api, content: bytes, content_type: str
) -> None:
    response = api.client.post(
        "/api/workers", content=content, headers={**api.admin, "Content-Type": content_type}
    )

    error = error_of(response, 422)
    assert error["code"] == "invalid_request"
    assert error["details"]
    assert instance_count(api) == 0


def test_an_anonymous_caller_is_refused_before_the_body_is_looked_at(api: Api) -> None:
    error = error_of(api.client.post("/api/workers", json={"name": ""}), 401)

    assert error["code"] == "unauthorized"
    assert "details" not in error


def test_a_name_with_a_c1_control_character_is_refused(api: Api) -> None:
    response = api.client.post("/api/workers", json={"name": "lab\x9b2Jone"}, headers=api.admin)

    assert response.status_code == 422


# ---- POST /api/workers/import ----------------------------------------------------------------
def test_an_admin_imports_a_running_instance_as_a_running_worker(api: Api) -> None:
    instance_id = api.launch_instance("running")

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 201, response.text
    worker = response.json()
    assert worker["status"] == "running"
    assert worker["ec2_state"] == "running"
    assert worker["version"] == 1
    assert worker["instance_id"] == instance_id
    assert worker["instance_type"] == "c5.large"
    assert worker["ami_id"] == AMI
    assert worker["private_ip"] == instance(api, instance_id)["PrivateIpAddress"]
    assert worker["name"] == instance_id  # no name given, no Name tag
    assert worker["owner"] == "ada"
    assert worker["transition_started_at"] is None
    assert instance_tags(api, instance_id)[WORKER_ID_TAG] == worker["worker_id"]
    assert [e["type"] for e in events(api, worker["worker_id"])] == ["worker.created"]
    assert events(api, worker["worker_id"])[0]["data"]["worker"] == worker


def test_an_imported_worker_takes_its_name_from_the_name_tag(api: Api) -> None:
    instance_id = api.launch_instance("running")
    api.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "Name", "Value": "bench"}])

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 201
    assert response.json()["name"] == "bench"


def test_a_name_and_owner_given_at_import_win(api: Api) -> None:
    instance_id = api.launch_instance("running")
    api.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "Name", "Value": "bench"}])

    response = api.client.post(
        "/api/workers/import",
        json={"instance_id": instance_id, "name": "lab-7", "owner": "bob"},
        headers=api.admin,
    )

    assert response.status_code == 201
    assert (response.json()["name"], response.json()["owner"]) == ("lab-7", "bob")
    assert [w["worker_id"] for w in listed(api, api.user("bob"))] == [response.json()["worker_id"]]


def test_a_stopped_instance_is_imported_as_a_stopped_worker(api: Api) -> None:
    instance_id = api.launch_instance("stopped")

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 201
    assert response.json()["status"] == "stopped"
    assert response.json()["ec2_state"] == "stopped"


def test_importing_an_unknown_instance_is_instance_not_found(api: Api) -> None:
    response = api.client.post(
        "/api/workers/import", json={"instance_id": UNKNOWN_INSTANCE}, headers=api.admin
    )

    error = error_of(response, 404)
    assert error["code"] == "instance_not_found"
    assert error["aws_code"] == "InvalidInstanceID.NotFound"
    assert UNKNOWN_INSTANCE in error["message"]
    assert listed(api, api.admin) == []


def test_importing_an_instance_twice_is_already_registered(api: Api) -> None:
    instance_id = api.launch_instance("running")
    first = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    second = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert first.status_code == 201
    error = error_of(second, 409)
    assert error["code"] == "already_registered"
    assert instance_id in error["message"]
    assert [w["worker_id"] for w in listed(api, api.admin)] == [first.json()["worker_id"]]
    assert instance_tags(api, instance_id)[WORKER_ID_TAG] == first.json()["worker_id"]
    assert len(events(api)) == 1


def test_the_instance_of_a_created_worker_cannot_be_imported(api: Api) -> None:
    worker = api.create_worker()

    response = api.client.post(
        "/api/workers/import", json={"instance_id": worker["instance_id"]}, headers=api.admin
    )

    assert error_of(response, 409)["code"] == "already_registered"


def test_a_terminated_instance_is_not_importable(api: Api) -> None:
    instance_id = api.launch_instance("terminated")

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    error = error_of(response, 409)
    assert error["code"] == "not_importable"
    assert "terminated" in error["message"]
    assert WORKER_ID_TAG not in instance_tags(api, instance_id)
    assert listed(api, api.admin) == []
    assert events(api) == []


@pytest.mark.parametrize("role", ["manager", "user"])
def test_only_an_admin_may_import(api: Api, role: str) -> None:
    instance_id = api.launch_instance("running")

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.headers("x", role)
    )

    assert error_of(response, 403) == {
        "code": "forbidden",
        "message": f"role {role} may not import",
    }
    assert WORKER_ID_TAG not in instance_tags(api, instance_id)
    assert listed(api, api.admin) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no instance id"),
        pytest.param({"instance_id": "i-123"}, id="too short"),
        pytest.param({"instance_id": "I-0123456789ABCDEF0"}, id="upper case"),
        pytest.param({"instance_id": "w-0123456789abcdef0"}, id="a worker id"),
        pytest.param({"instance_id": "i-0123456789abcdef0", "force": True}, id="unknown field"),
        pytest.param({"instance_id": "i-0123456789abcdef0", "name": ""}, id="empty name"),
        pytest.param({"instance_id": "i-0123456789abcdef0", "name": "a\nb"}, id="newline name"),
    ],
)
def test_a_malformed_import_body_is_refused(api: Api, body: dict[str, Any]) -> None:
    error = error_of(api.client.post("/api/workers/import", json=body, headers=api.admin), 422)

    assert error["code"] == "invalid_request"
    assert error["details"]


def test_an_aws_failure_while_tagging_an_import_saves_no_worker(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance_id = api.launch_instance("running")
    monkeypatch.setattr(api.container.commands._fleet, "tag", refuse)

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    error = error_of(response, 502)
    assert (error["code"], error["aws_code"]) == ("aws_error", "UnauthorizedOperation")
    assert listed(api, api.admin) == []
    assert events(api) == []


def test_two_imports_of_one_instance_that_race_make_one_worker(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another import lands between this import's duplicate check and its write."""
    instance_id = api.launch_instance("running")
    fleet = api.container.commands._fleet
    describe = fleet.describe
    other_admin = Principal("sub-grace", "grace", Role.ADMIN, int(time.time()) + 3600)

    def describe_while_another_import_lands(wanted: str) -> Any:
        monkeypatch.setattr(fleet, "describe", describe)
        api.container.commands.import_instance(
            other_admin, instance_id=wanted, name="first", owner=None
        )
        return describe(wanted)

    monkeypatch.setattr(fleet, "describe", describe_while_another_import_lands)

    response = api.client.post(
        "/api/workers/import",
        json={"instance_id": instance_id, "name": "second"},
        headers=api.admin,
    )

    workers = [w for w in listed(api, api.admin) if w["instance_id"] == instance_id]
    assert [w["name"] for w in workers] == ["first"]
    assert error_of(response, 409)["code"] == "already_registered"


def test_importing_an_instance_whose_name_tag_is_too_long_is_not_a_server_error(
    api: Api,
) -> None:
    instance_id = api.launch_instance("running")
    api.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "Name", "Value": "n" * 200}])

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code in (201, 409, 422), response.text


# ---- start -----------------------------------------------------------------------------------
def test_a_manager_starts_a_stopped_worker(api: Api) -> None:
    worker = stopped_worker(api)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.manager)

    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] == "pending"
    assert started["version"] == worker["version"] + 1
    assert started["transition_started_at"] is not None
    assert started["instance_id"] == worker["instance_id"]  # a manager's view is unmasked
    assert instance(api, worker["instance_id"])["State"]["Name"] in ("pending", "running")
    stored_worker = stored(api, worker["worker_id"])
    assert (stored_worker.status, stored_worker.version) == ("pending", started["version"])


def test_starting_records_a_status_event_naming_the_caller(api: Api) -> None:
    worker = stopped_worker(api)

    api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.manager)

    (event,) = events(api, worker["worker_id"], "worker.status.updated")
    assert event["workerversion"] == worker["version"] + 1
    assert event["data"]["old_status"] == "stopped"
    assert event["data"]["new_status"] == "pending"
    assert event["data"]["reason"] == "start requested by max"


def test_an_admin_may_start_a_worker_too(api: Api) -> None:
    worker = stopped_worker(api)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.admin)

    assert response.status_code == 202
    assert events(api, worker["worker_id"], "worker.status.updated")[0]["data"]["reason"] == (
        "start requested by ada"
    )


@pytest.mark.parametrize("status", ["running", "pending", "stopping", "terminating", "terminated"])
def test_a_worker_that_is_not_stopped_cannot_be_started(api: Api, status: str) -> None:
    worker = api.create_worker()
    api.set_status(worker["worker_id"], status)
    before = len(events(api))

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.manager)

    error = error_of(response, 409)
    assert error["code"] == "illegal_transition"
    assert error["worker_status"] == status
    assert stored(api, worker["worker_id"]).version == 2
    assert len(events(api)) == before


def test_a_user_may_not_start_their_own_worker(api: Api) -> None:
    worker = stopped_worker(api, owner="alice")

    response = api.client.post(
        f"/api/workers/{worker['worker_id']}/start", headers=api.user("alice")
    )

    assert error_of(response, 403) == {"code": "forbidden", "message": "role user may not start"}
    assert stored(api, worker["worker_id"]).status == "stopped"


def test_a_user_cannot_find_another_users_worker_to_start(api: Api) -> None:
    worker = stopped_worker(api, owner="alice")

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.user("bob"))

    assert error_of(response, 404)["code"] == "worker_not_found"
    assert stored(api, worker["worker_id"]).status == "stopped"


def test_starting_an_unknown_worker_is_not_found(api: Api) -> None:
    response = api.client.post(f"/api/workers/{UNKNOWN_WORKER}/start", headers=api.admin)

    assert error_of(response, 404)["code"] == "worker_not_found"


def test_starting_needs_a_token(api: Api) -> None:
    worker = stopped_worker(api)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start")

    assert error_of(response, 401)["code"] == "unauthorized"
    assert stored(api, worker["worker_id"]).status == "stopped"


# ---- stop ------------------------------------------------------------------------------------
def test_a_manager_stops_a_running_worker(api: Api) -> None:
    worker = running_worker(api)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.manager)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "stopping"
    assert response.json()["version"] == worker["version"] + 1
    assert instance(api, worker["instance_id"])["State"]["Name"] in ("stopping", "stopped")
    (event,) = events(api, worker["worker_id"], "worker.status.updated")
    assert (event["data"]["old_status"], event["data"]["new_status"]) == ("running", "stopping")
    assert event["data"]["reason"] == "stop requested by max"
    assert event["workerversion"] == response.json()["version"]


@pytest.mark.parametrize("status", ["stopped", "stopping", "provisioning", "terminated"])
def test_a_worker_that_is_not_running_cannot_be_stopped(api: Api, status: str) -> None:
    worker = api.create_worker()
    if status != "provisioning":
        api.set_status(worker["worker_id"], status)
    version = stored(api, worker["worker_id"]).version

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.admin)

    error = error_of(response, 409)
    assert error["code"] == "illegal_transition"
    assert error["worker_status"] == status
    assert stored(api, worker["worker_id"]).version == version


def test_a_user_may_not_stop_their_own_worker(api: Api) -> None:
    worker = running_worker(api, owner="alice")

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.user())

    assert error_of(response, 403)["code"] == "forbidden"
    assert stored(api, worker["worker_id"]).status == "running"


def test_a_user_cannot_find_another_users_worker_to_stop(api: Api) -> None:
    worker = running_worker(api, owner="alice")

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.user("bob"))

    assert error_of(response, 404)["code"] == "worker_not_found"


# ---- DELETE ----------------------------------------------------------------------------------
def test_an_admin_terminates_a_worker(api: Api) -> None:
    worker = running_worker(api)

    response = api.client.delete(f"/api/workers/{worker['worker_id']}", headers=api.admin)

    assert response.status_code == 202, response.text
    terminated = response.json()
    assert terminated["status"] == "terminating"
    assert terminated["terminated_by"] == "ada"
    assert terminated["terminated_at"] is not None
    assert terminated["version"] == worker["version"] + 2  # two events, one version each
    assert instance(api, worker["instance_id"])["State"]["Name"] in ("shutting-down", "terminated")


def test_terminating_records_the_status_change_and_worker_terminated(api: Api) -> None:
    worker = running_worker(api)

    terminated = api.client.delete(f"/api/workers/{worker['worker_id']}", headers=api.admin).json()

    recorded = events(api, worker["worker_id"])
    assert [e["type"] for e in recorded] == [
        "worker.created",
        "worker.status.updated",
        "worker.terminated",
    ]
    status_update, termination = recorded[1], recorded[2]
    assert status_update["data"]["new_status"] == "terminating"
    assert status_update["data"]["reason"] == "terminate requested by ada"
    assert termination["data"]["terminated_by"] == "ada"
    assert termination["data"]["terminated_at"] == terminated["terminated_at"]
    assert status_update["workerversion"] == terminated["version"] - 1
    assert termination["workerversion"] == terminated["version"]


@pytest.mark.parametrize("role", ["manager", "user"])
def test_only_an_admin_may_terminate(api: Api, role: str) -> None:
    worker = running_worker(api, owner="alice")

    response = api.client.delete(
        f"/api/workers/{worker['worker_id']}", headers=api.headers("alice", role)
    )

    assert error_of(response, 403) == {
        "code": "forbidden",
        "message": f"role {role} may not terminate",
    }
    assert instance(api, worker["instance_id"])["State"]["Name"] == "running"
    assert stored(api, worker["worker_id"]).status == "running"


def test_a_user_cannot_find_another_users_worker_to_terminate(api: Api) -> None:
    worker = running_worker(api, owner="alice")

    response = api.client.delete(f"/api/workers/{worker['worker_id']}", headers=api.user("bob"))

    assert error_of(response, 404)["code"] == "worker_not_found"


def test_terminating_twice_is_an_illegal_transition(api: Api) -> None:
    worker = running_worker(api)
    first = api.client.delete(f"/api/workers/{worker['worker_id']}", headers=api.admin)
    before = len(events(api))

    second = api.client.delete(f"/api/workers/{worker['worker_id']}", headers=api.admin)

    assert first.status_code == 202
    error = error_of(second, 409)
    assert (error["code"], error["worker_status"]) == ("illegal_transition", "terminating")
    assert stored(api, worker["worker_id"]).version == first.json()["version"]
    assert len(events(api)) == before


# ---- versions --------------------------------------------------------------------------------
def test_every_event_gets_a_version_of_its_own(api: Api) -> None:
    worker = api.create_worker()
    worker_id = worker["worker_id"]
    versions = [worker["version"]]

    api.set_status(worker_id, "running")  # EC2's report
    versions.append(stored(api, worker_id).version)
    versions.append(
        api.client.post(f"/api/workers/{worker_id}/stop", headers=api.manager).json()["version"]
    )
    api.ec2.stop_instances(InstanceIds=[worker["instance_id"]])
    api.set_status(worker_id, "stopped")
    versions.append(stored(api, worker_id).version)
    versions.append(
        api.client.post(f"/api/workers/{worker_id}/start", headers=api.manager).json()["version"]
    )
    versions.append(
        api.client.delete(f"/api/workers/{worker_id}", headers=api.admin).json()["version"]
    )

    assert versions == [1, 2, 3, 4, 5, 7]  # terminating emits two events: two versions
    commanded = [e["workerversion"] for e in events(api, worker_id)]
    assert commanded == [1, 3, 5, 6, 7]  # the EC2 reports here were saved without events
    assert api.client.get(f"/api/workers/{worker_id}", headers=api.admin).json()["version"] == 7


def test_a_refused_command_leaves_the_version_alone(api: Api) -> None:
    worker = running_worker(api)

    api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.admin)
    api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.user("alice"))

    assert stored(api, worker["worker_id"]).version == worker["version"]


# ---- AWS failures ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "suffix", "operation", "prepare"),
    [
        pytest.param("POST", "/start", "start", stopped_worker, id="start"),
        pytest.param("POST", "/stop", "stop", running_worker, id="stop"),
        pytest.param("DELETE", "", "terminate", running_worker, id="terminate"),
    ],
)
def test_an_aws_failure_is_a_502_and_changes_nothing(
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    suffix: str,
    operation: str,
    prepare: Any,
) -> None:
    worker = prepare(api)
    before = stored(api, worker["worker_id"])
    events_before = events(api)
    monkeypatch.setattr(api.container.commands._fleet, operation, refuse)

    response = api.client.request(
        method, f"/api/workers/{worker['worker_id']}{suffix}", headers=api.admin
    )

    error = error_of(response, 502)
    assert error == {
        "code": "aws_error",
        "message": "You are not authorized to perform this operation.",
        "aws_code": "UnauthorizedOperation",
    }
    after = stored(api, worker["worker_id"])
    assert (after.version, after.status) == (before.version, before.status)
    assert after == before
    assert events(api) == events_before


def test_an_aws_failure_at_launch_saves_no_worker(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.container.commands._fleet, "launch", refuse)

    response = api.client.post("/api/workers", json={"name": "lab"}, headers=api.admin)

    assert error_of(response, 502)["aws_code"] == "UnauthorizedOperation"
    assert listed(api, api.admin) == []
    assert events(api) == []


def test_ec2_refusing_for_the_instance_state_is_an_illegal_transition(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = running_worker(api)

    def incorrect_state(_: str) -> None:
        raise CloudError("IncorrectInstanceState", "The instance is not in a state to stop.")

    monkeypatch.setattr(api.container.commands._fleet, "stop", incorrect_state)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.admin)

    error = error_of(response, 409)
    assert (error["code"], error["worker_status"]) == ("illegal_transition", "running")
    assert stored(api, worker["worker_id"]).version == worker["version"]


def test_a_worker_whose_instance_is_gone_answers_instance_not_found(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = stopped_worker(api)

    def gone(_: str) -> None:
        raise CloudError("InvalidInstanceID.NotFound", "The instance ID does not exist")

    monkeypatch.setattr(api.container.commands._fleet, "start", gone)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/start", headers=api.admin)

    error = error_of(response, 404)
    assert (error["code"], error["aws_code"]) == (
        "instance_not_found",
        "InvalidInstanceID.NotFound",
    )
    assert stored(api, worker["worker_id"]).status == "stopped"


# ---- races with EC2's own reports ----------------------------------------------------------------
def test_a_report_saved_during_the_ec2_call_is_re_read_and_the_stop_applied_on_top(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = api.create_worker()
    api.set_status(worker["worker_id"], "pending")  # v2
    fleet = api.container.commands._fleet
    stop = fleet.stop

    def stop_while_ec2_reports_running(instance_id: str) -> None:
        api.set_status(worker["worker_id"], "running")  # v3, saved by someone else
        stop(instance_id)

    monkeypatch.setattr(fleet, "stop", stop_while_ec2_reports_running)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.admin)

    assert response.status_code == 202
    assert (response.json()["status"], response.json()["version"]) == ("stopping", 4)
    (event,) = events(api, worker["worker_id"], "worker.status.updated")
    assert (event["data"]["old_status"], event["workerversion"]) == ("running", 4)


def test_a_stop_that_ec2_reports_finished_before_it_is_saved_returns_the_reported_worker(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = running_worker(api)  # v2
    fleet = api.container.commands._fleet
    stop = fleet.stop

    def stop_and_ec2_reports_stopped(instance_id: str) -> None:
        stop(instance_id)
        api.set_status(worker["worker_id"], "stopped")  # v3

    monkeypatch.setattr(fleet, "stop", stop_and_ec2_reports_stopped)

    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.admin)

    assert response.status_code == 202
    assert (response.json()["status"], response.json()["version"]) == ("stopped", 3)
    assert events(api, worker["worker_id"], "worker.status.updated") == []
