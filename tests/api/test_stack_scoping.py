"""Workers belong to one stack: tagged with it at launch and import, and an instance of
another stack in the same account is never taken over (IAM enforces the same: tests/iam)."""

from __future__ import annotations

from cmlfleet.adapters.ec2 import IMPORTABLE_TAG, STACK_TAG, WORKER_ID_TAG
from tests.api.conftest import STACK, Api


def tags_of(api: Api, instance_id: str) -> dict[str, str]:
    (reservation,) = api.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return {t["Key"]: t["Value"] for t in reservation["Instances"][0].get("Tags", [])}


def test_an_imported_instance_is_tagged_with_this_stack_and_its_worker(api: Api) -> None:
    instance_id = api.launch_instance(tags={IMPORTABLE_TAG: "true"})

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 201, response.text
    tags = tags_of(api, instance_id)
    assert tags[STACK_TAG] == STACK
    assert tags[WORKER_ID_TAG] == response.json()["worker_id"]


def test_another_stacks_instance_is_not_importable_even_when_opted_in(api: Api) -> None:
    instance_id = api.launch_instance(
        tags={IMPORTABLE_TAG: "true", STACK_TAG: "cml-fleet-other", WORKER_ID_TAG: "w-theirs"}
    )

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_importable"
    assert "belongs to the stack cml-fleet-other" in response.json()["error"]["message"]
    assert tags_of(api, instance_id)[WORKER_ID_TAG] == "w-theirs"  # untouched
    assert api.client.get("/api/workers", headers=api.admin).json()["workers"] == []


def test_a_worker_of_this_stack_may_be_imported_again_after_its_record_is_gone(api: Api) -> None:
    instance_id = api.launch_instance(tags={IMPORTABLE_TAG: "true", STACK_TAG: STACK})

    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )

    assert response.status_code == 201, response.text


def test_a_current_metal_type_with_a_size_suffix_is_accepted_at_launch(api: Api) -> None:
    response = api.client.post(
        "/api/workers",
        json={"name": "big", "instance_type": "m7i.metal-24xl"},
        headers=api.admin,
    )

    assert response.status_code == 201, response.text
    assert response.json()["instance_type"] == "m7i.metal-24xl"
