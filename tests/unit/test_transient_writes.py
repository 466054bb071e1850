"""DynamoDB cancelling a transaction for a conflict or for throttling (which moto never
does, injected at botocore's level): the writers retry with backoff and lose nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cmlfleet.adapters.repository import DynamoDbWorkerRepository, TransientWriteError
from cmlfleet.domain.worker import apply_ec2_state
from cmlfleet.services.changes import MAX_SAVE_ATTEMPTS, backoff, save_change
from devstack.faults import TransactionCancellations
from tests.conftest import FleetAws
from tests.unit.test_repository import T0, event_items, registration

REASONS = ["TransactionConflict", "ThrottlingError"]


@pytest.fixture
def repository(fleet_aws: FleetAws) -> DynamoDbWorkerRepository:
    return DynamoDbWorkerRepository(fleet_aws.table_name, fleet_aws.dynamodb, timedelta(days=7))


@pytest.mark.parametrize("reason", REASONS)
def test_a_cancelled_transaction_is_a_transient_write_error_and_writes_nothing(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository, reason: str
) -> None:
    worker, events = registration()
    TransactionCancellations(reason).attach(fleet_aws.dynamodb)

    with pytest.raises(TransientWriteError, match=reason):
        repository.save(worker, events, expected_version=0)

    assert repository.get(worker.worker_id) is None
    assert event_items(fleet_aws) == []


@pytest.mark.parametrize("reason", REASONS)
def test_save_change_retries_a_cancelled_transaction_after_a_pause_and_saves_once(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository, reason: str
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    cancellations = TransactionCancellations(reason, count=2)
    cancellations.attach(fleet_aws.dynamodb)
    pauses: list[float] = []

    saved = save_change(
        repository,
        worker,
        lambda current: apply_ec2_state(current, "pending", observed_at=T0, now=T0),
        source="urn:test",
        pause=pauses.append,
    )

    assert cancellations.cancelled == 2
    assert len(pauses) == 2
    assert all(0 <= p <= 1.0 for p in pauses)
    assert saved.change is not None
    stored = repository.get(worker.worker_id)
    assert stored is not None
    assert stored.version == 2
    assert len(event_items(fleet_aws)) == 2  # the registration's event and this one, once


def test_save_change_gives_up_after_its_attempts_with_the_transient_error(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    TransactionCancellations("ThrottlingError", count=None).attach(fleet_aws.dynamodb)

    with pytest.raises(TransientWriteError):
        save_change(
            repository,
            worker,
            lambda current: apply_ec2_state(current, "pending", observed_at=T0, now=T0),
            source="urn:test",
            pause=lambda _: None,
        )
    stored = repository.get(worker.worker_id)
    assert stored is not None
    assert stored.version == 1


def test_the_backoff_is_jittered_under_a_doubling_cap() -> None:
    for attempt in range(MAX_SAVE_ATTEMPTS):
        ceiling = min(1.0, 0.05 * 2**attempt)
        samples = [backoff(attempt) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 100  # spread, not a fixed wait
