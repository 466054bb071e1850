"""Operator requests on a worker: which statuses allow them, and what they record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cmlfleet.domain.lifecycle import (
    IllegalTransitionError,
    request_start,
    request_stop,
    request_termination,
)
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker, apply_ec2_state, register_worker
from cmlfleet.events.catalog import WorkerStatusUpdated, WorkerTerminated

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def worker_in(status: WorkerStatus, instance_id: str | None = "i-0123456789abcdef0") -> Worker:
    base = register_worker(name="lab", owner="alice", now=NOW, instance_id=instance_id).worker
    return base.model_copy(update={"status": status, "version": 5})


@pytest.mark.parametrize(
    ("request_change", "allowed"),
    [
        (request_start, {WorkerStatus.STOPPED}),
        (request_stop, {WorkerStatus.RUNNING, WorkerStatus.PENDING}),
        (
            request_termination,
            set(WorkerStatus) - {WorkerStatus.TERMINATING, WorkerStatus.TERMINATED},
        ),
    ],
)
def test_each_request_is_allowed_from_exactly_its_statuses(
    request_change: object, allowed: set[WorkerStatus]
) -> None:
    for status in WorkerStatus:
        worker = worker_in(status)
        if status in allowed:
            change = request_change(worker, by="ada", now=NOW)  # type: ignore[operator]
            assert change.worker.version == 5 + len(change.events)  # one version per event
        else:
            with pytest.raises(IllegalTransitionError):
                request_change(worker, by="ada", now=NOW)  # type: ignore[operator]


def test_a_worker_without_an_instance_cannot_be_acted_on() -> None:
    with pytest.raises(IllegalTransitionError, match="cannot stop"):
        request_stop(worker_in(WorkerStatus.RUNNING, instance_id=None), by="ada", now=NOW)


def test_a_start_request_moves_to_pending_and_says_who_asked() -> None:
    change = request_start(worker_in(WorkerStatus.STOPPED), by="max", now=NOW)
    assert change.worker.status == WorkerStatus.PENDING
    assert change.worker.transition_started_at == NOW
    (event,) = change.events
    assert isinstance(event, WorkerStatusUpdated)
    assert (event.old_status, event.new_status) == (WorkerStatus.STOPPED, WorkerStatus.PENDING)
    assert event.reason == "start requested by max"


def test_termination_is_recorded_at_once_and_ec2_does_not_repeat_it() -> None:
    change = request_termination(worker_in(WorkerStatus.RUNNING), by="ada", now=NOW)
    assert [type(e) for e in change.events] == [WorkerStatusUpdated, WorkerTerminated]
    assert change.worker.terminated_by == "ada"
    later = datetime(2026, 11, 30, 12, 1, tzinfo=UTC)
    final = apply_ec2_state(change.worker, "terminated", observed_at=later, now=later)
    assert final is not None
    assert [type(e) for e in final.events] == [WorkerStatusUpdated]
    assert final.worker.terminated_by == "ada"


def test_ec2_reporting_the_requested_state_adds_nothing() -> None:
    stopping = request_stop(worker_in(WorkerStatus.RUNNING), by="ada", now=NOW).worker
    confirmed = apply_ec2_state(stopping, "stopping", observed_at=NOW, now=NOW)
    # No event; only EC2's report (state and time) is remembered, to order later ones.
    assert confirmed is not None
    assert confirmed.events == []
    assert confirmed.worker.status is WorkerStatus.STOPPING
    assert (confirmed.worker.ec2_state, confirmed.worker.ec2_state_at) == ("stopping", NOW)
