"""L6 over HTTP: workers belong to a name and, when known, a `sub`; identity settings.

User names can be given again (delete bob, create a new bob), the `sub` cannot: a new user
with an old user's name does not see the old user's workers. The API's identity settings
refuse plain-http issuers and key sets not on this machine, and name the owner claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cmlfleet.settings import ConfigurationError
from fleet_api.settings import load_api_settings
from tests.api.conftest import Api
from tests.api.test_workers_api import events, stored

OLD_BOB, NEW_BOB = "sub-of-the-first-bob", "sub-of-the-bob-created-later"


def as_bob(api: Api, sub: str) -> dict[str, str]:
    return api.headers("bob", "user", sub=sub)


def visible_ids(api: Api, headers: dict[str, str]) -> list[str]:
    response = api.client.get("/api/workers", headers=headers)
    assert response.status_code == 200, response.text
    return [worker["worker_id"] for worker in response.json()["workers"]]


def create(api: Api, **body: Any) -> dict[str, Any]:
    response = api.client.post("/api/workers", json={"name": "lab"} | body, headers=api.admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_l6_a_new_user_given_an_old_users_name_does_not_see_their_workers(api: Api) -> None:
    worker_id = create(api, owner="bob", owner_sub=OLD_BOB)["worker_id"]

    assert visible_ids(api, as_bob(api, OLD_BOB)) == [worker_id]
    assert visible_ids(api, as_bob(api, NEW_BOB)) == []
    response = api.client.get(f"/api/workers/{worker_id}", headers=as_bob(api, NEW_BOB))
    assert response.status_code == 404


def test_l6_a_worker_of_an_owner_without_a_known_sub_is_matched_by_name(api: Api) -> None:
    worker_id = create(api, owner="bob")["worker_id"]

    assert stored(api, worker_id).owner_sub is None
    assert visible_ids(api, as_bob(api, NEW_BOB)) == [worker_id]


def test_l6_a_worker_an_admin_creates_for_themselves_is_owned_by_their_sub(api: Api) -> None:
    headers = api.headers("ada", "admin", sub="sub-of-ada")
    response = api.client.post("/api/workers", json={"name": "mine"}, headers=headers)
    assert response.status_code == 201, response.text
    worker_id = response.json()["worker_id"]

    assert stored(api, worker_id).owner_sub == "sub-of-ada"
    (created,) = events(api, worker_id, "worker.created")
    assert created["ownersub"] == "sub-of-ada"


def test_l6_the_owners_sub_is_kept_out_of_what_clients_get(api: Api) -> None:
    worker = create(api, owner="bob", owner_sub=OLD_BOB)
    (created,) = events(api, worker["worker_id"], "worker.created")

    assert "owner_sub" not in worker
    assert "owner_sub" not in created["data"]["worker"]
    assert created["ownersub"] == OLD_BOB  # the relay's, to apply the same rule live
    listed = api.client.get(f"/api/workers/{worker['worker_id']}", headers=as_bob(api, OLD_BOB))
    assert "owner_sub" not in listed.json()


def test_l6_an_import_records_the_owners_sub(api: Api) -> None:
    instance_id = api.launch_instance()
    response = api.client.post(
        "/api/workers/import",
        json={"instance_id": instance_id, "owner": "bob", "owner_sub": OLD_BOB},
        headers=api.admin,
    )
    assert response.status_code == 201, response.text
    worker_id = response.json()["worker_id"]

    assert stored(api, worker_id).owner_sub == OLD_BOB
    assert visible_ids(api, as_bob(api, NEW_BOB)) == []


@pytest.mark.parametrize("owner_sub", ["", "   ", "a\nb", "x" * 257])
def test_l6_a_malformed_owner_sub_is_refused(api: Api, owner_sub: str) -> None:
    response = api.client.post(
        "/api/workers",
        json={"name": "lab", "owner": "bob", "owner_sub": owner_sub},
        headers=api.admin,
    )

    assert response.status_code == 422, response.text


def test_l6_events_of_later_changes_carry_the_owners_sub_too(api: Api) -> None:
    worker_id = create(api, owner="bob", owner_sub=OLD_BOB)["worker_id"]
    api.set_status(worker_id, "running")

    response = api.client.post(f"/api/workers/{worker_id}/stop", headers=api.admin)
    assert response.status_code == 202, response.text

    assert [event["ownersub"] for event in events(api, worker_id)] == [OLD_BOB, OLD_BOB]


# ---- settings ----------------------------------------------------------------------------------
@pytest.fixture
def api_environment(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name, value in api.aws.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CML_AMI_ID", "ami-0c0ffee0c0ffee000")
    monkeypatch.setenv("OIDC_ISSUER", "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_a")
    monkeypatch.setenv("OIDC_AUDIENCE", "dashboard")
    load_api_settings.cache_clear()
    yield monkeypatch
    load_api_settings.cache_clear()


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("OIDC_ISSUER", "http://idp.example.com"),
        ("OIDC_JWKS_URL", "http://idp.example.com/keys"),
    ],
)
def test_l6_the_api_refuses_a_plain_http_issuer_or_key_set(
    api_environment: pytest.MonkeyPatch, name: str, url: str
) -> None:
    api_environment.setenv(name, url)

    with pytest.raises(ConfigurationError, match=f"{name}: .*https://"):
        load_api_settings()


def test_l6_the_api_takes_an_http_issuer_on_this_machine(
    api_environment: pytest.MonkeyPatch,
) -> None:
    api_environment.setenv("OIDC_ISSUER", "http://127.0.0.1:8080/auth")

    assert load_api_settings().jwks_url == "http://127.0.0.1:8080/auth/.well-known/jwks.json"


def test_l6_the_owner_claim_is_a_setting_of_the_api(api_environment: pytest.MonkeyPatch) -> None:
    assert load_api_settings().owner_claim == "cognito:username"
    api_environment.setenv("OWNER_CLAIM", "email")
    load_api_settings.cache_clear()

    assert load_api_settings().owner_claim == "email"
