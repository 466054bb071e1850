"""M3: each worker's CML certificate pinned at first contact, kept beside the worker, and
an imported worker's confirmed by an admin before it is sent anything but a handshake.

The pins' rules (domain), their store (DynamoDB on moto, and the fake), the trust that
admits workers (with a fake certificate fetch), the operator's commands, the settings."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from cmlfleet import bootstrap
from cmlfleet.adapters.ec2 import IMPORTABLE_TAG
from cmlfleet.adapters.repository import (
    CmlCertificateStore,
    DynamoDbWorkerRepository,
    InMemoryWorkerRepository,
)
from cmlfleet.cml.errors import CmlError, NotAdmittedError
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.cml.trust import CmlTrust
from cmlfleet.domain.certificate import (
    CertificateMismatchError,
    CmlCertificate,
    awaiting_confirmation,
    confirm,
    fingerprint,
    first_contact,
)
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.identity import Principal, Role
from cmlfleet.services.cml_certificates import CmlCertificateCommands
from cmlfleet.services.commands import ForbiddenError, WorkerNotFoundError
from cmlfleet.settings import FleetSettings
from devstack.cmlsim import self_signed_certificate
from tests.conftest import FleetAws

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PEM, _ = self_signed_certificate("127.0.0.1")
OTHER_PEM, _ = self_signed_certificate("127.0.0.1")
ENDPOINT = "https://10.0.1.5"
LOGIN = CmlCredentials("admin", "secret")


def principal(name: str, role: Role) -> Principal:
    return Principal(subject=f"sub-{name}", username=name, role=role, expires_at=2**40)


ADMIN, MANAGER = principal("ada", Role.ADMIN), principal("max", Role.MANAGER)


def login_for(worker_id: str) -> Callable[[], CmlCredentials]:
    return lambda: LOGIN


def worker(worker_id: str, *, imported: bool = False) -> Worker:
    """A worker the fleet launched, or (`imported`) one adopted with the opt-in tag."""
    return register_worker(
        worker_id=worker_id,
        name="lab",
        owner="alice",
        now=NOW,
        instance_id="i-0abc",
        tags={IMPORTABLE_TAG: "true"} if imported else None,
    ).worker


class Fetches:
    """A certificate fetch that counts its handshakes and shows `pem`."""

    def __init__(self, pem: str = PEM) -> None:
        self.pem, self.endpoints = pem, list[str]()

    async def __call__(self, endpoint: str, seconds: float) -> str:
        self.endpoints.append(endpoint)
        return self.pem


def pin_trust(store: CmlCertificateStore, fetch: Fetches) -> CmlTrust:
    return CmlTrust("pin", login_for, store=store, fetch=fetch, clock=lambda: NOW)


# ---- the rules --------------------------------------------------------------------------


def test_m3_a_fingerprint_is_the_sha256_of_the_der_bytes_as_openssl_prints_it() -> None:
    import hashlib
    import ssl

    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(PEM)).hexdigest().upper()
    assert fingerprint(PEM).replace(":", "") == digest
    assert len(fingerprint(PEM)) == 32 * 3 - 1


def test_m3_a_launched_worker_is_trusted_at_first_contact_an_imported_one_stays_pending() -> None:
    launched = first_contact(None, "w-1", PEM, NOW)
    imported = first_contact(awaiting_confirmation("w-2"), "w-2", PEM, NOW)
    assert (launched.state, launched.trusted) == ("pinned", True)
    assert (imported.state, imported.trusted) == ("pending", False)
    assert imported.sha256 == fingerprint(PEM)


def test_m3_confirming_takes_the_fingerprint_in_any_usual_spelling() -> None:
    pending = first_contact(awaiting_confirmation("w-2"), "w-2", PEM, NOW)
    spelled = fingerprint(PEM).replace(":", "").lower()
    assert confirm(pending, spelled).trusted


@pytest.mark.parametrize(
    "pin",
    [None, awaiting_confirmation("w-2"), first_contact(None, "w-2", OTHER_PEM, NOW)],
    ids=["no pin", "not fetched yet", "another certificate"],
)
def test_m3_confirming_another_fingerprint_or_none_fetched_is_refused(
    pin: CmlCertificate | None,
) -> None:
    with pytest.raises(CertificateMismatchError):
        confirm(pin, fingerprint(PEM))


# ---- the store --------------------------------------------------------------------------


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return InMemoryWorkerRepository()
    aws: FleetAws = request.getfixturevalue("fleet_aws")
    return DynamoDbWorkerRepository(aws.table_name, aws.dynamodb, timedelta(days=7))


def test_m3_a_pin_is_kept_and_read_back(store: CmlCertificateStore) -> None:
    pin = first_contact(None, "w-1", PEM, NOW)
    assert store.put_cml_certificate(pin, replacing=None)
    assert store.get_cml_certificate("w-1") == pin
    assert store.get_cml_certificate("w-2") is None


def test_m3_when_two_pin_at_once_the_first_pin_stays(store: CmlCertificateStore) -> None:
    assert store.put_cml_certificate(first_contact(None, "w-1", PEM, NOW), replacing=None)
    assert not store.put_cml_certificate(first_contact(None, "w-1", OTHER_PEM, NOW), replacing=None)
    found = store.get_cml_certificate("w-1")
    assert found is not None
    assert found.pem == PEM


def test_m3_a_pin_changes_only_from_the_state_it_was_read_in(store: CmlCertificateStore) -> None:
    marker = awaiting_confirmation("w-1")
    assert store.put_cml_certificate(marker, replacing=None)
    fetched = first_contact(marker, "w-1", PEM, NOW)
    assert store.put_cml_certificate(fetched, replacing=marker)
    # A confirmation of a pin that was replaced meanwhile does not apply.
    assert not store.put_cml_certificate(confirm(fetched, fingerprint(PEM)), replacing=marker)
    assert store.put_cml_certificate(confirm(fetched, fingerprint(PEM)), replacing=fetched)


def test_m3_the_pin_is_an_item_of_its_own_and_no_worker(fleet_aws: FleetAws) -> None:
    repository = DynamoDbWorkerRepository(fleet_aws.table_name, fleet_aws.dynamodb, timedelta(7))
    worker = register_worker(name="lab", owner="alice", now=NOW, instance_id="i-0abc").worker
    repository.save(worker, [], expected_version=0)
    repository.put_cml_certificate(first_contact(None, worker.worker_id, PEM, NOW), replacing=None)
    assert [w.worker_id for w in repository.list_workers()] == [worker.worker_id]
    item = fleet_aws.dynamodb.get_item(
        TableName=fleet_aws.table_name, Key={"pk": {"S": "CMLCERT"}, "sk": {"S": worker.worker_id}}
    )["Item"]
    assert item["kind"] == {"S": "cml_certificate"}
    assert item["state"] == {"S": "pinned"}


# ---- the trust --------------------------------------------------------------------------


def test_m3_first_contact_fetches_and_pins_then_the_pin_is_used() -> None:
    store, fetch = InMemoryWorkerRepository(), Fetches()
    trust = pin_trust(store, fetch)
    first = asyncio.run(trust.admission(worker("w-1"), ENDPOINT))
    second = asyncio.run(trust.admission(worker("w-1"), ENDPOINT))
    assert fetch.endpoints == [ENDPOINT]  # one handshake, at first contact only
    assert first.pin == second.pin == fingerprint(PEM)
    assert first.verify is second.verify  # one SSL context per pinned certificate
    assert store.certificates["w-1"].state == "pinned"


def test_m3_an_imported_worker_is_refused_until_confirmed_and_its_certificate_is_shown() -> None:
    store, fetch = InMemoryWorkerRepository(), Fetches()
    store.put_cml_certificate(awaiting_confirmation("w-2"), replacing=None)
    trust = pin_trust(store, fetch)
    with pytest.raises(NotAdmittedError, match="awaits an admin's confirmation"):
        asyncio.run(trust.admission(worker("w-2", imported=True), ENDPOINT))
    assert store.certificates["w-2"].sha256 == fingerprint(PEM)  # for the admin to check
    pending = store.certificates["w-2"]
    store.put_cml_certificate(confirm(pending, fingerprint(PEM)), replacing=pending)
    assert asyncio.run(trust.admission(worker("w-2", imported=True), ENDPOINT)).pin == fingerprint(
        PEM
    )
    assert fetch.endpoints == [ENDPOINT]


def test_m3_a_worker_imported_before_pins_were_marked_awaits_confirmation_all_the_same() -> None:
    """Imported before the import command wrote a `pending` pin: no pin item at all, but
    its tags still say it was adopted, so first contact does not trust it."""
    store, fetch = InMemoryWorkerRepository(), Fetches()
    trust = pin_trust(store, fetch)
    for _ in range(2):
        with pytest.raises(NotAdmittedError, match="awaits an admin's confirmation"):
            asyncio.run(trust.admission(worker("w-3", imported=True), ENDPOINT))
    pending = store.certificates["w-3"]
    assert (pending.state, pending.sha256) == ("pending", fingerprint(PEM))
    assert fetch.endpoints == [ENDPOINT]  # fetched once, shown, then kept
    store.put_cml_certificate(confirm(pending, fingerprint(PEM)), replacing=pending)
    admitted = asyncio.run(trust.admission(worker("w-3", imported=True), ENDPOINT))
    assert admitted.pin == fingerprint(PEM)
    # A launched worker (no opt-in tag) is still trusted at first contact.
    assert asyncio.run(trust.admission(worker("w-4"), ENDPOINT)).pin == fingerprint(PEM)


def test_m3_a_pin_another_collector_made_first_is_the_one_used() -> None:
    store, fetch = InMemoryWorkerRepository(), Fetches(OTHER_PEM)

    class Racing(InMemoryWorkerRepository):
        def put_cml_certificate(self, certificate: Any, *, replacing: Any) -> bool:
            store.put_cml_certificate(first_contact(None, "w-1", PEM, NOW), replacing=None)
            return store.put_cml_certificate(certificate, replacing=replacing)

        def get_cml_certificate(self, worker_id: str) -> Any:
            return store.get_cml_certificate(worker_id)

    admission = asyncio.run(pin_trust(Racing(), fetch).admission(worker("w-1"), ENDPOINT))
    assert admission.pin == fingerprint(PEM)


def test_m3_plain_http_has_nothing_to_pin_and_is_refused() -> None:
    trust = pin_trust(InMemoryWorkerRepository(), Fetches())
    with pytest.raises(NotAdmittedError, match="plain http"):
        asyncio.run(trust.admission(worker("w-1"), "http://10.0.1.5"))


def test_m3_a_certificate_that_cannot_be_fetched_is_this_workers_failure() -> None:
    async def unreachable(endpoint: str, seconds: float) -> str:
        raise ConnectionRefusedError("refused")

    trust = CmlTrust("pin", login_for, store=InMemoryWorkerRepository(), fetch=unreachable)
    with pytest.raises(CmlError, match="cannot fetch its TLS certificate"):
        asyncio.run(trust.admission(worker("w-1"), ENDPOINT))


def test_m3_verification_off_admits_without_a_pin_or_a_fetch() -> None:
    fetch = Fetches()
    trust = CmlTrust("off", login_for, fetch=fetch)
    admission = asyncio.run(trust.admission(worker("w-1"), ENDPOINT))
    assert admission.verify is False
    assert fetch.endpoints == []


# ---- the operator's commands ------------------------------------------------------------


@pytest.fixture
def fleet() -> tuple[InMemoryWorkerRepository, str]:
    repository = InMemoryWorkerRepository()
    worker = register_worker(name="lab", owner="alice", now=NOW, instance_id="i-0abc").worker
    repository.save(worker, [], expected_version=0)
    repository.put_cml_certificate(awaiting_confirmation(worker.worker_id), replacing=None)
    pending = first_contact(awaiting_confirmation(worker.worker_id), worker.worker_id, PEM, NOW)
    repository.put_cml_certificate(pending, replacing=awaiting_confirmation(worker.worker_id))
    return repository, worker.worker_id


def test_m3_an_admin_confirms_the_fingerprint_read_on_the_host(
    fleet: tuple[InMemoryWorkerRepository, str],
) -> None:
    repository, worker_id = fleet
    commands = CmlCertificateCommands(repository)
    assert commands.confirm(ADMIN, worker_id, fingerprint(PEM)).trusted
    assert commands.confirm(ADMIN, worker_id, fingerprint(PEM)).trusted  # idempotent
    with pytest.raises(CertificateMismatchError):
        commands.confirm(ADMIN, worker_id, fingerprint(OTHER_PEM))
    assert repository.certificates[worker_id].trusted


def test_m3_re_pinning_forgets_the_pin_and_the_next_one_awaits_confirmation(
    fleet: tuple[InMemoryWorkerRepository, str],
) -> None:
    repository, worker_id = fleet
    commands = CmlCertificateCommands(repository)
    commands.confirm(ADMIN, worker_id, fingerprint(PEM))
    assert commands.repin(ADMIN, worker_id) == awaiting_confirmation(worker_id)
    trust = pin_trust(repository, Fetches(OTHER_PEM))
    with pytest.raises(NotAdmittedError):
        asyncio.run(trust.admission(worker(worker_id), ENDPOINT))
    assert repository.certificates[worker_id].sha256 == fingerprint(OTHER_PEM)


def test_m3_a_manager_reads_the_pin_but_only_an_admin_changes_it_and_users_see_none(
    fleet: tuple[InMemoryWorkerRepository, str],
) -> None:
    repository, worker_id = fleet
    commands = CmlCertificateCommands(repository)
    pin = commands.get(MANAGER, worker_id)
    assert pin is not None
    assert pin.sha256 == fingerprint(PEM)
    with pytest.raises(ForbiddenError):
        commands.confirm(MANAGER, worker_id, fingerprint(PEM))
    with pytest.raises(ForbiddenError):
        commands.get(principal("alice", Role.USER), worker_id)
    with pytest.raises(WorkerNotFoundError):
        commands.get(principal("bob", Role.USER), worker_id)


# ---- settings and credentials -----------------------------------------------------------

REQUIRED = {"table_name": "workers", "idempotency_table_name": "idem"}
TOPIC = {"topic_arn": "arn:aws:sns:us-east-1:123456789012:events"}


def test_m3_tls_is_verified_by_default_by_pinning() -> None:
    settings = FleetSettings(**REQUIRED, **TOPIC)
    assert settings.cml_verify_tls is True
    assert settings.cml_trust_mode == "pin"
    assert FleetSettings(**REQUIRED, **TOPIC, cml_ca_bundle="/ca.pem").cml_trust_mode == "ca"
    assert FleetSettings(**REQUIRED, **TOPIC, cml_verify_tls=False).cml_trust_mode == "off"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("cml-fleet/cml/{worker_id}", True),
        ("cml/{worker_id}/login", True),
        ("cml-fleet/shared", True),  # one secret for all: no {worker_id}, no wildcard
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:cml-AbCdEf", True),
        ("{worker_id}", False),  # secret:*-??????, every secret of the account
        ("{worker_id}/cml", False),
        ("cml-{worker_id}", False),  # every secret whose name starts cml-
        ("cml/{worker_id}*", False),
        ("cml/{worker_id}\n", False),
    ],
)
def test_m3_a_per_worker_secret_name_needs_a_fixed_prefix_ending_in_a_slash(
    name: str, allowed: bool
) -> None:
    if allowed:
        assert FleetSettings(**REQUIRED, **TOPIC, cml_credentials_secret=name)
    else:
        with pytest.raises(ValidationError, match="fixed prefix ending in / before"):
            FleetSettings(**REQUIRED, **TOPIC, cml_credentials_secret=name)


def test_m3_with_worker_id_in_the_secret_name_each_worker_gets_its_own_login(
    fleet_aws: FleetAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = boto3.client("secretsmanager")
    for worker_id, password in (("w-1", "one"), ("w-2", "two")):
        secrets.create_secret(
            Name=f"cml-fleet/cml/{worker_id}",
            SecretString=json.dumps({"username": "collector", "password": password}),
        )
    monkeypatch.setenv("CML_CREDENTIALS_SECRET", "cml-fleet/cml/{worker_id}")
    bootstrap.reset()
    assert bootstrap.cml_credentials("w-1") == CmlCredentials("collector", "one")
    assert bootstrap.cml_credentials("w-2") == CmlCredentials("collector", "two")
    monkeypatch.setenv("CML_VERIFY_TLS", "false")
    bootstrap.reset()
    admission = asyncio.run(bootstrap.cml_trust().admission(worker("w-2"), ENDPOINT))
    assert admission.credentials() == CmlCredentials("collector", "two")


def test_m3_verification_turned_off_is_said_once_as_a_warning(
    fleet_aws: FleetAws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CML_VERIFY_TLS", "false")
    bootstrap.reset()
    with caplog.at_level(logging.WARNING):
        assert bootstrap.cml_trust().mode == "off"
        assert bootstrap.cml_trust().mode == "off"
    warnings = [r for r in caplog.records if "CML_VERIFY_TLS=false" in r.getMessage()]
    assert len(warnings) == 1
