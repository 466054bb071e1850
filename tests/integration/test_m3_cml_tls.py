"""M3: the collectors reach each worker's CML over verified TLS, against the simulator
serving HTTPS with a self-signed certificate, as a CML host does.

Its certificate is pinned at first contact; one that changes afterwards is refused at the
handshake, before any request (the simulator counts the logins, and every request); an
imported worker is sent nothing until an admin confirms its fingerprint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmlfleet.adapters.ec2 import IMPORTABLE_TAG
from cmlfleet.adapters.repository import InMemoryWorkerRepository
from cmlfleet.cml.client import CmlClient, CmlSharedState
from cmlfleet.cml.errors import CmlError, NotAdmittedError
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.cml.trust import Admission, CmlTrust, TrustMode
from cmlfleet.domain.certificate import CertificateMismatchError, awaiting_confirmation, fingerprint
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.identity import Principal, Role
from cmlfleet.services.cml_certificates import CmlCertificateCommands
from cmlfleet.services.collection import RunResult, refresh_labs
from devstack.cmlsim import CmlSimulator

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ADMIN = Principal(subject="sub-ada", username="ada", role=Role.ADMIN, expires_at=2**40)
PASSWORD = "s3cret-cml-password"


@pytest.fixture
def cml() -> Iterator[CmlSimulator]:
    simulator = CmlSimulator(password=PASSWORD).start(tls=True)
    yield simulator
    simulator.stop()


@pytest.fixture
def repository() -> InMemoryWorkerRepository:
    return InMemoryWorkerRepository()


def a_worker(
    repository: InMemoryWorkerRepository,
    cml: CmlSimulator,
    *,
    imported: bool = False,
    imported_unmarked: bool = False,
) -> Worker:
    worker = register_worker(
        name="lab",
        owner="alice",
        now=NOW,
        instance_id="i-0abc",
        ec2_state="running",
        # An imported instance keeps the account owner's opt-in tag among its tags.
        tags={IMPORTABLE_TAG: "true"} if imported or imported_unmarked else None,
    ).worker
    cml.add_worker(worker.worker_id)
    if imported:  # as the import command marks it, before the worker exists
        repository.put_cml_certificate(awaiting_confirmation(worker.worker_id), replacing=None)
    # imported_unmarked: imported before the import marked pins, so no pin item at all
    repository.save(worker, [], expected_version=0)
    return worker


def trust(
    repository: InMemoryWorkerRepository, cml: CmlSimulator, mode: TrustMode = "pin", **kw: str
) -> CmlTrust:
    return CmlTrust(
        mode,
        lambda worker_id: lambda: CmlCredentials(cml.username, cml.password),
        store=repository if mode == "pin" else None,
        **kw,  # type: ignore[arg-type]
    )


def collect(repository: InMemoryWorkerRepository, cml: CmlSimulator, by: CmlTrust) -> RunResult:
    """One labs run with a new client (new connections, as a new invocation makes)."""

    async def run() -> RunResult:
        async with CmlClient(lambda: CmlCredentials("", ""), trust=by, retries=0) as client:
            return await refresh_labs(
                repository,
                client,
                endpoint_for=lambda worker: cml.worker_url(worker.worker_id),
                now=NOW,
                source="urn:test",
            )

    return asyncio.run(run())


def test_m3_first_contact_pins_the_certificate_and_later_runs_verify_it(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    worker = a_worker(repository, cml)
    pinning = trust(repository, cml)
    assert collect(repository, cml, pinning).failed == {}
    pin = repository.certificates[worker.worker_id]
    assert cml.certificate_pem is not None
    assert (pin.state, pin.sha256) == ("pinned", fingerprint(cml.certificate_pem))
    assert collect(repository, cml, pinning).failed == {}
    assert repository.certificates[worker.worker_id] == pin


def test_m3_a_changed_certificate_is_refused_at_the_handshake_with_nothing_sent(
    repository: InMemoryWorkerRepository, cml: CmlSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    worker = a_worker(repository, cml)
    pinning = trust(repository, cml)
    collect(repository, cml, pinning)
    logins, requests = cml.logins[worker.worker_id], cml.requests[worker.worker_id]
    cml.renew_certificate()  # the host reinstalled, or someone else answering at its address
    with caplog.at_level(logging.WARNING):
        result = collect(repository, cml, pinning)
    failure = result.failed[worker.worker_id]
    assert "changed since it was pinned (self-signed certificate)" in failure
    assert f"DELETE /api/workers/{worker.worker_id}/cml-certificate" in failure
    assert (cml.logins[worker.worker_id], cml.requests[worker.worker_id]) == (logins, requests)
    refusals = [r for r in caplog.records if "certificate refused" in r.getMessage()]
    assert refusals
    assert all(PASSWORD not in r.getMessage() + str(r.__dict__) for r in caplog.records)


def test_m3_an_imported_worker_gets_no_login_until_an_admin_confirms_its_certificate(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    worker = a_worker(repository, cml, imported=True)
    pinning = trust(repository, cml)
    for _ in range(2):
        result = collect(repository, cml, pinning)
        assert "awaits an admin's confirmation" in result.failed[worker.worker_id]
    assert (cml.logins[worker.worker_id], cml.requests[worker.worker_id]) == (0, 0)
    pending = repository.certificates[worker.worker_id]
    assert cml.certificate_pem is not None
    assert (pending.state, pending.sha256) == ("pending", fingerprint(cml.certificate_pem))
    commands = CmlCertificateCommands(repository)
    with pytest.raises(CertificateMismatchError):
        commands.confirm(ADMIN, worker.worker_id, "AB:" * 31 + "AB")
    assert collect(repository, cml, pinning).failed[worker.worker_id]
    commands.confirm(ADMIN, worker.worker_id, fingerprint(cml.certificate_pem))
    assert collect(repository, cml, pinning).failed == {}
    assert cml.logins[worker.worker_id] == 1


def test_m3_a_worker_imported_before_pins_were_marked_gets_no_login_until_confirmed(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    worker = a_worker(repository, cml, imported_unmarked=True)
    assert worker.worker_id not in repository.certificates
    pinning = trust(repository, cml)
    for _ in range(2):
        result = collect(repository, cml, pinning)
        assert "awaits an admin's confirmation" in result.failed[worker.worker_id]
    assert (cml.logins[worker.worker_id], cml.requests[worker.worker_id]) == (0, 0)
    pending = repository.certificates[worker.worker_id]
    assert cml.certificate_pem is not None
    assert (pending.state, pending.sha256) == ("pending", fingerprint(cml.certificate_pem))
    CmlCertificateCommands(repository).confirm(ADMIN, worker.worker_id, pending.sha256 or "")
    assert collect(repository, cml, pinning).failed == {}
    assert cml.logins[worker.worker_id] == 1


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An HTTPS URL whose port accepts TCP connections and then never says a word."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        while not closing.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)  # kept open, silent: no TLS handshake ever completes

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    closing.set()
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
    listener.close()
    for connection in held:
        connection.close()
    thread.join(timeout=5)


def test_m3_first_contact_with_hosts_that_never_finish_the_handshake_holds_no_thread(
    repository: InMemoryWorkerRepository, silent_server: str
) -> None:
    """30 first contacts at once with hosts that accept TCP and stay silent each time out in
    the configured timeout, together: no thread waits on a handshake (Lambda's default
    executor has about 6; here 6 too, whatever this machine's CPU count)."""
    timeout, count = 1.0, 30
    workers = [
        register_worker(name=f"w{i}", owner="alice", now=NOW, ec2_state="running").worker
        for i in range(count)
    ]
    pinning = CmlTrust(
        "pin", lambda _: lambda: CmlCredentials("", ""), store=repository, timeout=timeout
    )

    async def first_contacts() -> list[BaseException | object]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=6))
        return await asyncio.gather(
            *(pinning.admission(worker, silent_server) for worker in workers),
            return_exceptions=True,
        )

    started = time.monotonic()
    outcomes = asyncio.run(first_contacts())
    elapsed = time.monotonic() - started
    assert all(isinstance(outcome, CmlError) for outcome in outcomes), outcomes
    assert all(f"no TLS handshake within {timeout:g} s" in str(outcome) for outcome in outcomes), (
        outcomes
    )
    # Each waits its own timeout, all at once: about 1 s in all, not 30 / 6 x 1 s.
    assert elapsed < 3 * timeout, elapsed
    assert repository.certificates == {}  # nothing pinned from a host that showed nothing


def test_m3_after_a_re_pin_the_new_certificate_is_shown_and_trusted_once_confirmed(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    worker = a_worker(repository, cml)
    pinning = trust(repository, cml)
    collect(repository, cml, pinning)
    renewed = cml.renew_certificate()
    commands = CmlCertificateCommands(repository)
    commands.repin(ADMIN, worker.worker_id)
    assert collect(repository, cml, pinning).failed  # fetched, awaiting confirmation
    commands.confirm(ADMIN, worker.worker_id, fingerprint(renewed))
    assert collect(repository, cml, pinning).failed == {}


def test_m3_with_verification_off_any_certificate_is_accepted(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    a_worker(repository, cml)
    unverified = trust(repository, cml, "off")
    assert collect(repository, cml, unverified).failed == {}
    cml.renew_certificate()
    assert collect(repository, cml, unverified).failed == {}
    assert repository.certificates == {}


def test_m3_a_private_ca_bundle_is_verified_against_with_no_pin(
    repository: InMemoryWorkerRepository, cml: CmlSimulator, tmp_path: Path
) -> None:
    worker = a_worker(repository, cml)
    bundle = tmp_path / "ca.pem"
    assert cml.certificate_pem is not None
    bundle.write_text(cml.certificate_pem)  # self-signed: its own CA, issued for 127.0.0.1
    verified = trust(repository, cml, "ca", ca_bundle=str(bundle))
    assert collect(repository, cml, verified).failed == {}
    cml.renew_certificate()
    logins = cml.logins[worker.worker_id]
    assert "TLS certificate refused" in collect(repository, cml, verified).failed[worker.worker_id]
    assert cml.logins[worker.worker_id] == logins
    assert repository.certificates == {}


def test_m3_a_client_with_a_trust_sends_nothing_to_an_endpoint_not_admitted(
    repository: InMemoryWorkerRepository, cml: CmlSimulator
) -> None:
    worker = a_worker(repository, cml)

    async def unadmitted() -> None:
        async with CmlClient(lambda: CmlCredentials("", ""), trust=trust(repository, cml)) as c:
            await c.system_stats(cml.worker_url(worker.worker_id))

    with pytest.raises(NotAdmittedError):
        asyncio.run(unadmitted())
    assert cml.requests[worker.worker_id] == 0


def test_m3_a_token_is_not_sent_when_its_address_now_belongs_to_another_worker(
    cml: CmlSimulator,
) -> None:
    url = cml.add_worker("shared-address")
    shared = CmlSharedState()
    login = CmlCredentials(cml.username, cml.password)

    class Fixed(CmlTrust):
        def __init__(self, worker_id: str) -> None:
            super().__init__("off", lambda _: lambda: login)
            self.worker_id = worker_id

        async def admission(self, worker: Worker, endpoint: str) -> Admission:
            return Admission(self.worker_id, False, lambda: login)

    async def stats_as(worker_id: str) -> None:
        worker = register_worker(name="lab", owner="alice", now=NOW, worker_id=worker_id).worker
        async with CmlClient(lambda: login, trust=Fixed(worker_id)) as client:
            client.share_state_with(shared)
            await client.admit(worker, url)
            await client.system_stats(url)

    asyncio.run(stats_as("w-old"))
    asyncio.run(stats_as("w-old"))
    assert cml.logins["shared-address"] == 1  # the token is kept across runs
    asyncio.run(stats_as("w-new"))
    assert cml.logins["shared-address"] == 2  # but not handed to the address's next worker
