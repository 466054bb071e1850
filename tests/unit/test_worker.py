"""The worker aggregate: registering a worker and applying EC2 state reports to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Worker, apply_ec2_state, register_worker
from cmlfleet.events.catalog import WorkerCreated, WorkerStatusUpdated, WorkerTerminated

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_worker(**overrides: object) -> Worker:
    arguments: dict[str, object] = {
        "name": "lab-1",
        "owner": "alice",
        "now": T0,
        "instance_id": "i-0abcdef1234567890",
    }
    arguments.update(overrides)
    return register_worker(**arguments).worker  # type: ignore[arg-type]


def applied(worker: Worker, state: str, seconds: float) -> Worker:
    change = apply_ec2_state(worker, state, observed_at=at(seconds), now=at(seconds + 0.5))
    assert change is not None, f"{state} at +{seconds}s was not applied"
    return change.worker


# ---- register_worker -----------------------------------------------------------------


def test_a_new_worker_starts_at_version_one_and_provisioning() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0)

    assert change.worker.version == 1
    assert change.worker.status is WorkerStatus.PROVISIONING
    assert change.worker.ec2_state is None
    assert change.worker.ec2_state_at is None
    assert change.worker.created_at == change.worker.updated_at == T0


def test_a_provisioning_worker_has_its_transition_start_set() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0)

    assert change.worker.transition_started_at == T0


def test_registering_emits_exactly_one_worker_created_with_the_worker_view() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0, tags={"team": "net"})

    assert len(change.events) == 1
    (event,) = change.events
    assert isinstance(event, WorkerCreated)
    assert event.event_type == "worker.created"
    assert event.worker == change.worker.view()
    assert event.worker.tags == {"team": "net"}
    assert event.worker.version == 1


def test_a_worker_registered_with_a_known_ec2_state_takes_the_mapped_status() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0, ec2_state="running")

    assert change.worker.status is WorkerStatus.RUNNING
    assert change.worker.ec2_state == "running"
    assert change.worker.transition_started_at is None


def test_a_worker_registered_in_a_transitional_ec2_state_has_a_transition_start() -> None:
    change = register_worker(name="lab-1", owner="alice", now=T0, ec2_state="stopping")

    assert change.worker.status is WorkerStatus.STOPPING
    assert change.worker.transition_started_at == T0


def test_registering_keeps_a_given_worker_id_and_otherwise_makes_one() -> None:
    given = register_worker(name="a", owner="o", now=T0, worker_id="w-given").worker
    made = register_worker(name="a", owner="o", now=T0).worker

    assert given.worker_id == "w-given"
    assert made.worker_id.startswith("w-")
    assert made.worker_id != register_worker(name="a", owner="o", now=T0).worker.worker_id


# ---- apply_ec2_state: changes and their events -----------------------------------------


def test_applying_a_new_state_bumps_the_version_by_one() -> None:
    worker = new_worker()

    change = apply_ec2_state(worker, "pending", observed_at=at(1), now=at(2))

    assert change is not None
    assert change.worker.version == worker.version + 1 == 2


def test_applying_a_state_records_status_ec2_state_and_times() -> None:
    worker = new_worker()

    change = apply_ec2_state(worker, "running", observed_at=at(5), now=at(6))

    assert change is not None
    assert change.worker.status is WorkerStatus.RUNNING
    assert change.worker.ec2_state == "running"
    assert change.worker.ec2_state_at == at(5)
    assert change.worker.updated_at == at(6)
    assert change.worker.created_at == T0


def test_applying_a_state_does_not_modify_the_original_worker() -> None:
    worker = new_worker()

    apply_ec2_state(worker, "running", observed_at=at(5), now=at(6))

    assert worker.status is WorkerStatus.PROVISIONING
    assert worker.version == 1


def test_a_change_emits_one_status_updated_event_with_old_and_new_status() -> None:
    worker = new_worker()

    change = apply_ec2_state(worker, "pending", observed_at=at(1), now=at(2))

    assert change is not None
    assert len(change.events) == 1
    (event,) = change.events
    assert isinstance(event, WorkerStatusUpdated)
    assert event.event_type == "worker.status.updated"
    assert event.worker_id == worker.worker_id
    assert event.old_status is WorkerStatus.PROVISIONING
    assert event.new_status is WorkerStatus.PENDING
    assert event.ec2_state == "pending"


@pytest.mark.parametrize(
    ("ec2_state", "transitional"),
    [
        ("pending", True),
        ("stopping", True),
        ("shutting-down", True),
        ("running", False),
        ("stopped", False),
        ("terminated", False),
    ],
)
def test_the_transition_start_is_set_only_for_transitional_statuses(
    ec2_state: str, transitional: bool
) -> None:
    worker = new_worker()

    change = apply_ec2_state(worker, ec2_state, observed_at=at(3), now=at(4))

    assert change is not None
    expected = at(3) if transitional else None
    assert change.worker.transition_started_at == expected
    status_event = change.events[0]
    assert isinstance(status_event, WorkerStatusUpdated)
    assert status_event.transition_started_at == expected


def test_reaching_a_steady_state_clears_the_transition_start() -> None:
    pending = applied(new_worker(), "pending", 1)
    assert pending.transition_started_at == at(1)

    running = applied(pending, "running", 5)

    assert running.transition_started_at is None


def test_a_full_lifecycle_bumps_the_version_once_per_change() -> None:
    worker = new_worker()
    for number, (state, seconds) in enumerate(
        [("pending", 1), ("running", 5), ("stopping", 60), ("stopped", 90)], start=2
    ):
        worker = applied(worker, state, seconds)
        assert worker.version == number
    assert worker.status is WorkerStatus.STOPPED


# ---- ordering and repeats --------------------------------------------------------------


def test_an_older_report_than_the_last_applied_is_ignored() -> None:
    running = applied(new_worker(), "running", 5)

    assert apply_ec2_state(running, "pending", observed_at=at(1), now=at(10)) is None


def test_an_older_report_is_ignored_even_if_it_would_be_a_legal_successor() -> None:
    running = applied(new_worker(), "running", 5)

    assert apply_ec2_state(running, "stopping", observed_at=at(4), now=at(10)) is None


def test_a_repeat_of_the_same_state_changes_nothing() -> None:
    running = applied(new_worker(), "running", 5)

    assert apply_ec2_state(running, "running", observed_at=at(5), now=at(10)) is None


def test_a_newer_report_of_the_same_status_is_remembered_without_an_event() -> None:
    running = applied(new_worker(), "running", 5)

    change = apply_ec2_state(running, "running", observed_at=at(9), now=at(10))

    assert change is not None
    assert change.events == []
    assert change.worker.ec2_state_at == at(9)
    assert change.worker.version == running.version + 1
    # so a report from in between, delivered last, is recognised as stale
    assert apply_ec2_state(change.worker, "stopped", observed_at=at(7), now=at(11)) is None


def test_a_same_timestamp_report_is_applied_when_ec2_allows_it_to_follow() -> None:
    pending = applied(new_worker(), "pending", 5)

    change = apply_ec2_state(pending, "running", observed_at=at(5), now=at(6))

    assert change is not None
    assert change.worker.status is WorkerStatus.RUNNING


def test_a_same_timestamp_report_is_ignored_when_ec2_cannot_go_that_way() -> None:
    running = applied(new_worker(), "running", 5)

    assert apply_ec2_state(running, "pending", observed_at=at(5), now=at(6)) is None
    assert apply_ec2_state(running, "stopped", observed_at=at(5), now=at(6)) is None


def test_a_same_timestamp_unknown_state_is_ignored() -> None:
    running = applied(new_worker(), "running", 5)

    assert apply_ec2_state(running, "rebooting", observed_at=at(5), now=at(6)) is None


def test_a_newer_report_is_applied_even_if_it_skips_lifecycle_steps() -> None:
    pending = applied(new_worker(), "pending", 1)

    change = apply_ec2_state(pending, "stopped", observed_at=at(100), now=at(101))

    assert change is not None
    assert change.worker.status is WorkerStatus.STOPPED


def test_a_state_ec2_does_not_define_makes_the_worker_unknown() -> None:
    running = applied(new_worker(), "running", 5)

    change = apply_ec2_state(running, "hibernating", observed_at=at(6), now=at(7))

    assert change is not None
    assert change.worker.status is WorkerStatus.UNKNOWN
    assert change.worker.ec2_state == "hibernating"


# ---- termination -----------------------------------------------------------------------


def test_termination_emits_status_updated_and_terminated_exactly_once() -> None:
    running = applied(new_worker(), "running", 5)

    change = apply_ec2_state(running, "terminated", observed_at=at(90), now=at(91))

    assert change is not None
    assert [event.event_type for event in change.events] == [
        "worker.status.updated",
        "worker.terminated",
    ]
    terminated = change.events[1]
    assert isinstance(terminated, WorkerTerminated)
    assert terminated.worker_id == running.worker_id
    assert terminated.terminated_at == at(90)
    assert terminated.terminated_by == "ec2"
    assert change.worker.status is WorkerStatus.TERMINATED
    assert change.worker.terminated_at == at(90)
    assert change.worker.terminated_by == "ec2"


def test_shutting_down_then_terminated_emits_worker_terminated_only_at_the_end() -> None:
    shutting = apply_ec2_state(
        applied(new_worker(), "running", 5), "shutting-down", observed_at=at(80), now=at(81)
    )
    assert shutting is not None
    assert [event.event_type for event in shutting.events] == ["worker.status.updated"]
    assert shutting.worker.status is WorkerStatus.TERMINATING

    done = apply_ec2_state(shutting.worker, "terminated", observed_at=at(90), now=at(91))

    assert done is not None
    assert [event.event_type for event in done.events] == [
        "worker.status.updated",
        "worker.terminated",
    ]


@pytest.mark.parametrize("state", ["pending", "running", "stopped", "terminated", "rebooting"])
def test_a_terminated_worker_never_comes_back(state: str) -> None:
    terminated = applied(applied(new_worker(), "running", 5), "terminated", 90)

    assert apply_ec2_state(terminated, state, observed_at=at(1000), now=at(1001)) is None


def test_a_worker_already_marked_terminated_emits_no_second_worker_terminated() -> None:
    shutting = applied(new_worker(), "shutting-down", 80)
    marked = shutting.model_copy(update={"terminated_at": at(70), "terminated_by": "alice"})

    change = apply_ec2_state(marked, "terminated", observed_at=at(90), now=at(91))

    assert change is not None
    assert [event.event_type for event in change.events] == ["worker.status.updated"]
    assert change.worker.terminated_at == at(70)
    assert change.worker.terminated_by == "alice"


# ---- a worker registered with the state EC2 already reports ----------------------------


def test_a_delayed_launch_report_does_not_regress_a_worker_registered_as_running() -> None:
    # devstack/fleet.py registers a just-launched instance as running; EC2's own
    # notifications for the launch (pending at +1 s, running at +5 s) arrive afterwards,
    # in any order.
    registered = register_worker(
        name="lab-1", owner="alice", now=at(10), ec2_state="running"
    ).worker
    assert apply_ec2_state(registered, "running", observed_at=at(5), now=at(11)) is None

    late_pending = apply_ec2_state(registered, "pending", observed_at=at(1), now=at(12))

    assert late_pending is None  # the worker must stay running, as EC2 reports it
