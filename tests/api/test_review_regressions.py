"""Regressions found in review: each names what went wrong before it was fixed."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from cmlfleet.adapters.repository import ConcurrentModificationError
from cmlfleet.identity import AuthenticationError, JwksSigningKeys
from devstack.issuer import DevelopmentIssuer
from tests.api.conftest import AMI, Api


def test_an_instance_the_owner_did_not_opt_in_cannot_be_imported(api: Api) -> None:
    instance_id = api.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    response = api.client.post(
        "/api/workers/import", json={"instance_id": instance_id}, headers=api.admin
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_importable"
    assert "cmlfleet:importable=true" in response.json()["error"]["message"]


def test_a_launch_whose_worker_cannot_be_saved_is_undone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = api.container.commands._repository

    def broken_save(*_: Any, **__: Any) -> None:
        raise RuntimeError("DynamoDB is having a bad day")

    monkeypatch.setattr(repository, "save", broken_save)
    response = api.client.post("/api/workers", json={"name": "doomed"}, headers=api.admin)
    assert response.status_code == 500
    instances = [i for r in api.ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert [i["State"]["Name"] for i in instances] == ["terminated"]


def test_a_command_that_loses_a_race_with_another_writer_is_a_409(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = api.create_worker()
    api.set_status(worker["worker_id"], "running")
    repository = api.container.commands._repository

    def always_stale(*_: Any, **__: Any) -> None:
        raise ConcurrentModificationError("changed meanwhile")

    monkeypatch.setattr(repository, "save", always_stale)
    response = api.client.post(f"/api/workers/{worker['worker_id']}/stop", headers=api.admin)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    "answer",
    [
        ValueError("an HTML page is no JSON"),
        jwt.PyJWKClientError("The JWKS endpoint did not return a JSON object"),
        {"message": "Internal server error"},
    ],
    ids=["not-json", "not-an-object", "object-without-keys"],
)
def test_an_unusable_key_set_is_an_authentication_error_not_a_crash(
    answer: Exception | dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = JwksSigningKeys("http://127.0.0.1:1/.well-known/jwks.json")

    def fetch() -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(keys._client, "fetch_data", fetch)
    with pytest.raises(AuthenticationError, match="unusable"):
        keys.key_for(DevelopmentIssuer("https://idp.test").token("ada", "admin"))
