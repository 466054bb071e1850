"""M3: /api/workers/{id}/cml-certificate. An imported worker's CML certificate awaits an
admin's confirmation (the fingerprint they read on the CML host); an admin may re-pin."""

from __future__ import annotations

from typing import Any

import pytest

from cmlfleet.domain.certificate import fingerprint, first_contact
from cmlfleet.timeutil import utc_now
from devstack.cmlsim import self_signed_certificate
from tests.api.conftest import Api

PEM, _ = self_signed_certificate("10.0.1.5")
OTHER_PEM, _ = self_signed_certificate("10.0.1.5")


def imported(api: Api, owner: str = "alice") -> str:
    response = api.client.post(
        "/api/workers/import",
        json={"instance_id": api.launch_instance(), "owner": owner},
        headers=api.admin,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["worker_id"])


def contacted(api: Api, worker_id: str, pem: str = PEM) -> None:
    """What a collector does at first contact: the certificate fetched, pinned as it may be."""
    store = api.container.commands._repository
    current = store.get_cml_certificate(worker_id)
    pin = first_contact(current, worker_id, pem, utc_now())
    assert store.put_cml_certificate(pin, replacing=current)


def certificate(api: Api, worker_id: str, headers: dict[str, str] | None = None) -> Any:
    response = api.client.get(
        f"/api/workers/{worker_id}/cml-certificate", headers=headers or api.admin
    )
    assert response.status_code == 200, response.text
    return response.json()


def confirm(api: Api, worker_id: str, sha256: str, headers: dict[str, str] | None = None) -> Any:
    return api.client.post(
        f"/api/workers/{worker_id}/cml-certificate/confirm",
        json={"sha256": sha256},
        headers=headers or api.admin,
    )


def test_m3_an_imported_worker_awaits_confirmation_before_its_cml_is_ever_contacted(
    api: Api,
) -> None:
    worker_id = imported(api)
    assert certificate(api, worker_id) == {
        "worker_id": worker_id,
        "state": "pending",
        "sha256": None,
        "fetched_at": None,
    }


def test_m3_a_launched_worker_has_no_pin_until_first_contact_then_a_trusted_one(
    api: Api,
) -> None:
    worker_id = api.create_worker()["worker_id"]
    assert certificate(api, worker_id)["state"] == "none"
    contacted(api, worker_id)
    assert certificate(api, worker_id)["state"] == "pinned"


def test_m3_an_admin_confirms_the_fingerprint_shown_and_a_wrong_one_is_a_409(api: Api) -> None:
    worker_id = imported(api)
    early = confirm(api, worker_id, fingerprint(PEM))
    assert early.status_code == 409, early.text
    assert "no certificate fetched" in early.json()["error"]["message"]
    contacted(api, worker_id)
    shown = certificate(api, worker_id, api.manager)
    assert (shown["state"], shown["sha256"]) == ("pending", fingerprint(PEM))
    wrong = confirm(api, worker_id, fingerprint(OTHER_PEM))
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["error"]["code"] == "certificate_mismatch"
    assert fingerprint(PEM) in wrong.json()["error"]["message"]
    right = confirm(api, worker_id, fingerprint(PEM).replace(":", "").lower())
    assert right.status_code == 200, right.text
    assert right.json()["state"] == "pinned"


def test_m3_re_pinning_forgets_the_pin_and_what_comes_next_awaits_confirmation(
    api: Api,
) -> None:
    worker_id = api.create_worker()["worker_id"]
    contacted(api, worker_id)
    response = api.client.delete(f"/api/workers/{worker_id}/cml-certificate", headers=api.admin)
    assert response.status_code == 200, response.text
    assert (response.json()["state"], response.json()["sha256"]) == ("pending", None)
    contacted(api, worker_id, OTHER_PEM)
    assert certificate(api, worker_id) | {"fetched_at": None} == {
        "worker_id": worker_id,
        "state": "pending",
        "sha256": fingerprint(OTHER_PEM),
        "fetched_at": None,
    }


@pytest.mark.parametrize("sha256", ["", "not-hex", "AB:" * 31, "AB" * 33])
def test_m3_a_confirmation_must_be_a_sha256_fingerprint(api: Api, sha256: str) -> None:
    worker_id = imported(api)
    assert confirm(api, worker_id, sha256).status_code == 422


def test_m3_only_an_admin_changes_a_pin_and_a_user_sees_none_even_of_their_own_worker(
    api: Api,
) -> None:
    worker_id = imported(api, owner="alice")
    contacted(api, worker_id)
    path = f"/api/workers/{worker_id}/cml-certificate"
    assert confirm(api, worker_id, fingerprint(PEM), api.manager).status_code == 403
    assert api.client.delete(path, headers=api.manager).status_code == 403
    assert api.client.get(path, headers=api.user("alice")).status_code == 403
    assert api.client.get(path, headers=api.user("bob")).status_code == 404
    assert api.client.get(path).status_code == 401
    assert certificate(api, worker_id)["state"] == "pending"
