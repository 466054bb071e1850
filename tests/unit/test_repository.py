"""Workers and their outbox events: the DynamoDB repository and its in-memory fake."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cmlfleet import bootstrap
from cmlfleet.adapters.repository import (
    ConcurrentModificationError,
    DynamoDbWorkerRepository,
    InMemoryWorkerRepository,
    WorkerRepository,
    event_partition,
)
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Change, Worker, apply_ec2_state, register_worker
from cmlfleet.events.envelope import CloudEvent, make_event
from tests.conftest import FleetAws

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
INSTANCE_ID = "i-0abcdef1234567890"


def events_of(change: Change, *, time: datetime) -> list[CloudEvent]:
    return [
        make_event(
            payload,
            worker_id=change.worker.worker_id,
            version=change.worker.version,
            owner=change.worker.owner,
            time=time,
        )
        for payload in change.events
    ]


def registration(**overrides: Any) -> tuple[Worker, list[CloudEvent]]:
    arguments: dict[str, Any] = {
        "name": "lab-1",
        "owner": "alice",
        "now": T0,
        "instance_id": INSTANCE_ID,
        "instance_type": "c5.2xlarge",
        "tags": {"team": "net"},
    }
    arguments.update(overrides)
    change = register_worker(**arguments)
    return change.worker, events_of(change, time=T0)


def state_change(worker: Worker, state: str, seconds: int) -> tuple[Worker, list[CloudEvent]]:
    moment = T0 + timedelta(seconds=seconds)
    change = apply_ec2_state(worker, state, observed_at=moment, now=moment)
    assert change is not None
    return change.worker, events_of(change, time=moment)


# ---- the DynamoDB table ----------------------------------------------------------------


@pytest.fixture
def repository(fleet_aws: FleetAws) -> DynamoDbWorkerRepository:
    return bootstrap.worker_repository()


def all_items(fleet_aws: FleetAws) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in fleet_aws.dynamodb.get_paginator("scan").paginate(TableName=fleet_aws.table_name):
        items.extend(page["Items"])
    return items


def event_items(fleet_aws: FleetAws) -> list[dict[str, Any]]:
    return [item for item in all_items(fleet_aws) if item["pk"]["S"].startswith("EVENTS#")]


def worker_items(fleet_aws: FleetAws) -> list[dict[str, Any]]:
    return [item for item in all_items(fleet_aws) if item["pk"]["S"] == "WORKER"]


def test_bootstrap_builds_the_dynamodb_repository_once(fleet_aws: FleetAws) -> None:
    repository = bootstrap.worker_repository()

    assert isinstance(repository, DynamoDbWorkerRepository)
    assert bootstrap.worker_repository() is repository


def test_saving_a_new_worker_writes_the_worker_and_its_event(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    (stored_worker,) = worker_items(fleet_aws)
    assert stored_worker["sk"]["S"] == worker.worker_id
    assert stored_worker["kind"]["S"] == "worker"
    assert stored_worker["version"]["N"] == "1"
    assert stored_worker["instance_id"]["S"] == INSTANCE_ID
    (stored_event,) = event_items(fleet_aws)
    assert stored_event["sk"]["S"] == events[0].id


def test_an_event_item_is_an_outbox_entry_holding_the_whole_cloudevent(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    (item,) = event_items(fleet_aws)
    (event,) = events
    assert item["pk"]["S"] == "EVENTS#2026113010" == event_partition(event)
    assert item["kind"]["S"] == "event"
    assert item["type"]["S"] == "worker.created"
    assert item["worker_id"]["S"] == worker.worker_id
    assert item["owner"]["S"] == "alice"
    assert CloudEvent.from_json(item["event"]["S"]) == event


def test_an_event_item_expires_seven_days_after_the_event(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    (item,) = event_items(fleet_aws)
    expected = (events[0].time + timedelta(days=7)).timestamp()
    assert abs(int(item["expires_at"]["N"]) - expected) <= 1


def test_the_worker_item_has_no_expiry(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    (item,) = worker_items(fleet_aws)
    assert "expires_at" not in item


def test_a_saved_worker_reads_back_equal(repository: DynamoDbWorkerRepository) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    assert repository.get(worker.worker_id) == worker


def test_a_worker_with_every_time_field_reads_back_equal(
    repository: DynamoDbWorkerRepository,
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    shutting, events = state_change(worker, "shutting-down", 30)
    repository.save(shutting, events, expected_version=1)
    done, events = state_change(shutting, "terminated", 60)

    repository.save(done, events, expected_version=2)

    stored = repository.get(worker.worker_id)
    assert stored == done
    assert stored is not None
    assert stored.terminated_at == T0 + timedelta(seconds=60)
    assert stored.ec2_state_at == T0 + timedelta(seconds=60)


def test_a_field_cleared_by_a_change_is_cleared_in_the_table(
    repository: DynamoDbWorkerRepository,
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    assert worker.transition_started_at is not None
    running, events = state_change(worker, "running", 5)

    repository.save(running, events, expected_version=1)

    stored = repository.get(worker.worker_id)
    assert stored is not None
    assert stored.transition_started_at is None
    assert stored.status is WorkerStatus.RUNNING


def test_getting_an_unknown_worker_returns_none(repository: DynamoDbWorkerRepository) -> None:
    assert repository.get("w-nobody") is None


def test_a_worker_is_found_by_its_instance_id(repository: DynamoDbWorkerRepository) -> None:
    worker, events = registration()
    other, other_events = registration(instance_id="i-0fedcba9876543210", name="lab-2")
    repository.save(worker, events, expected_version=0)
    repository.save(other, other_events, expected_version=0)

    assert repository.find_by_instance_id(INSTANCE_ID) == worker
    assert repository.find_by_instance_id("i-0fedcba9876543210") == other


def test_an_instance_that_is_no_worker_is_not_found(
    repository: DynamoDbWorkerRepository,
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)

    assert repository.find_by_instance_id("i-00000000000000000") is None


def test_listing_returns_every_worker_and_no_events(
    repository: DynamoDbWorkerRepository,
) -> None:
    saved = []
    for number in range(3):
        worker, events = registration(name=f"lab-{number}", instance_id=None)
        repository.save(worker, events, expected_version=0)
        saved.append(worker)

    listed = repository.list_workers()

    assert sorted(listed, key=lambda w: w.worker_id) == sorted(saved, key=lambda w: w.worker_id)


def test_listing_an_empty_table_returns_nothing(repository: DynamoDbWorkerRepository) -> None:
    assert repository.list_workers() == []


def test_a_change_saved_at_the_expected_version_is_stored_with_its_events(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    done, terminated_events = state_change(worker, "terminated", 60)

    repository.save(done, terminated_events, expected_version=1)

    assert repository.get(worker.worker_id) == done
    assert sorted(item["type"]["S"] for item in event_items(fleet_aws)) == [
        "worker.created",
        "worker.status.updated",
        "worker.terminated",
    ]


def test_a_save_at_a_stale_version_raises_and_writes_nothing(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    pending, pending_events = state_change(worker, "pending", 1)
    repository.save(pending, pending_events, expected_version=1)
    items_before = all_items(fleet_aws)
    stale, stale_events = state_change(worker, "running", 5)  # made from version 1

    with pytest.raises(ConcurrentModificationError, match="no longer at version 1"):
        repository.save(stale, stale_events, expected_version=1)

    assert repository.get(worker.worker_id) == pending
    assert all(item["sk"]["S"] != stale_events[0].id for item in event_items(fleet_aws))
    assert len(all_items(fleet_aws)) == len(items_before)


def test_saving_a_new_worker_whose_id_exists_raises_and_writes_nothing(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    twin, twin_events = registration(worker_id=worker.worker_id, name="twin")

    with pytest.raises(ConcurrentModificationError):
        repository.save(twin, twin_events, expected_version=0)

    assert repository.get(worker.worker_id) == worker
    assert [item["sk"]["S"] for item in event_items(fleet_aws)] == [events[0].id]


def test_saving_with_an_expected_version_that_is_ahead_raises(
    repository: DynamoDbWorkerRepository,
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    ahead = worker.model_copy(update={"version": 6})

    with pytest.raises(ConcurrentModificationError):
        repository.save(ahead, [], expected_version=5)

    assert repository.get(worker.worker_id) == worker


@pytest.mark.parametrize("version_offset", [0, -1])
def test_a_save_that_does_not_bump_the_version_is_refused(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository, version_offset: int
) -> None:
    worker, events = registration()
    repository.save(worker, events, expected_version=0)
    unbumped = worker.model_copy(update={"name": "renamed", "version": 1 + version_offset})

    with pytest.raises(ValueError, match="must bump the worker's version"):
        repository.save(unbumped, [], expected_version=1)

    assert repository.get(worker.worker_id) == worker


# ---- the same contract on the in-memory fake -------------------------------------------


class Subject:
    """A repository under the shared contract, and a way to see which events it stored."""

    def __init__(self, repository: WorkerRepository, fleet_aws: FleetAws | None) -> None:
        self.repository = repository
        self._fleet_aws = fleet_aws

    def stored_event_ids(self) -> set[str]:
        if isinstance(self.repository, InMemoryWorkerRepository):
            return {event.id for event in self.repository.events}
        assert self._fleet_aws is not None
        return {item["sk"]["S"] for item in event_items(self._fleet_aws)}


@pytest.fixture(params=["dynamodb", "in-memory"])
def subject(request: pytest.FixtureRequest) -> Subject:
    if request.param == "in-memory":
        return Subject(InMemoryWorkerRepository(), None)
    fleet_aws: FleetAws = request.getfixturevalue("fleet_aws")
    return Subject(bootstrap.worker_repository(), fleet_aws)


def test_any_repository_stores_a_new_worker_with_its_event(subject: Subject) -> None:
    worker, events = registration()

    subject.repository.save(worker, events, expected_version=0)

    assert subject.repository.get(worker.worker_id) == worker
    assert subject.stored_event_ids() == {events[0].id}


def test_any_repository_finds_and_lists_workers(subject: Subject) -> None:
    any_repository = subject.repository
    worker, events = registration()
    other, other_events = registration(instance_id="i-0fedcba9876543210", name="lab-2")
    any_repository.save(worker, events, expected_version=0)
    any_repository.save(other, other_events, expected_version=0)

    assert any_repository.find_by_instance_id(INSTANCE_ID) == worker
    assert any_repository.find_by_instance_id("i-00000000000000000") is None
    assert any_repository.get("w-nobody") is None
    assert {w.worker_id for w in any_repository.list_workers()} == {
        worker.worker_id,
        other.worker_id,
    }


def test_any_repository_refuses_a_stale_version_and_keeps_the_newer_state(
    subject: Subject,
) -> None:
    any_repository = subject.repository
    worker, events = registration()
    any_repository.save(worker, events, expected_version=0)
    pending, pending_events = state_change(worker, "pending", 1)
    any_repository.save(pending, pending_events, expected_version=1)
    stale, stale_events = state_change(worker, "running", 5)

    with pytest.raises(ConcurrentModificationError):
        any_repository.save(stale, stale_events, expected_version=1)

    assert any_repository.get(worker.worker_id) == pending
    assert stale_events[0].id not in subject.stored_event_ids()


def test_any_repository_refuses_a_second_new_worker_with_the_same_id(
    subject: Subject,
) -> None:
    any_repository = subject.repository
    worker, events = registration()
    any_repository.save(worker, events, expected_version=0)
    twin, twin_events = registration(worker_id=worker.worker_id, name="twin")

    with pytest.raises(ConcurrentModificationError):
        any_repository.save(twin, twin_events, expected_version=0)

    assert any_repository.get(worker.worker_id) == worker


def test_the_fake_refuses_a_save_that_does_not_bump_the_version() -> None:
    fake = InMemoryWorkerRepository()
    worker, events = registration()
    fake.save(worker, events, expected_version=0)
    unbumped = worker.model_copy(update={"name": "renamed"})

    with pytest.raises(ValueError, match="must bump the worker's version"):
        fake.save(unbumped, [], expected_version=1)

    assert fake.get(worker.worker_id) == worker


def test_event_items_are_partitioned_by_the_hour_of_event_time() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0)
    late = make_event(
        change.events[0],
        worker_id=change.worker.worker_id,
        version=1,
        owner="alice",
        time=datetime(2026, 1, 2, 23, 59, 59, tzinfo=UTC),
    )

    assert event_partition(late) == "EVENTS#2026010223"


def test_the_event_item_json_is_what_the_event_serialises_to(
    fleet_aws: FleetAws, repository: DynamoDbWorkerRepository
) -> None:
    worker, events = registration()

    repository.save(worker, events, expected_version=0)

    (item,) = event_items(fleet_aws)
    assert json.loads(item["event"]["S"]) == json.loads(events[0].to_json())
