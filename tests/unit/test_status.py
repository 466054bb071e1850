"""The one table that maps EC2 instance states onto worker statuses."""

from __future__ import annotations

import pytest

from cmlfleet.domain.status import (
    EC2_STATE_TO_STATUS,
    EC2_SUCCESSORS,
    TRANSITIONAL_STATUSES,
    Ec2State,
    WorkerStatus,
    is_transitional,
    status_for_ec2_state,
)

EXPECTED_MAPPING = [
    ("pending", WorkerStatus.PENDING),
    ("running", WorkerStatus.RUNNING),
    ("stopping", WorkerStatus.STOPPING),
    ("stopped", WorkerStatus.STOPPED),
    ("shutting-down", WorkerStatus.TERMINATING),
    ("terminated", WorkerStatus.TERMINATED),
]


@pytest.mark.parametrize(("ec2_state", "expected"), EXPECTED_MAPPING)
def test_each_ec2_state_maps_to_its_worker_status(ec2_state: str, expected: WorkerStatus) -> None:
    assert status_for_ec2_state(ec2_state) is expected
    assert EC2_STATE_TO_STATUS[Ec2State(ec2_state)] is expected


def test_the_table_has_exactly_the_expected_rows() -> None:
    assert {state.value: status for state, status in EC2_STATE_TO_STATUS.items()} == dict(
        EXPECTED_MAPPING
    )


@pytest.mark.parametrize(
    "ec2_state",
    ["", "rebooting", "RUNNING", "Running", " running", "running ", "shutting_down", "unknown"],
)
def test_a_state_ec2_does_not_define_maps_to_unknown(ec2_state: str) -> None:
    assert status_for_ec2_state(ec2_state) is WorkerStatus.UNKNOWN


@pytest.mark.parametrize("state", list(Ec2State))
def test_every_ec2_state_has_a_row_in_the_table(state: Ec2State) -> None:
    assert state in EC2_STATE_TO_STATUS


@pytest.mark.parametrize("state", list(Ec2State))
def test_every_ec2_state_has_a_successor_entry(state: Ec2State) -> None:
    assert state in EC2_SUCCESSORS
    assert all(isinstance(successor, Ec2State) for successor in EC2_SUCCESSORS[state])


def test_the_successor_table_has_no_entry_for_undefined_states() -> None:
    assert set(EC2_SUCCESSORS) == set(Ec2State)


def test_terminated_has_no_successor_and_every_other_state_can_shut_down() -> None:
    assert EC2_SUCCESSORS[Ec2State.TERMINATED] == frozenset()
    for state in set(Ec2State) - {Ec2State.TERMINATED, Ec2State.SHUTTING_DOWN}:
        assert Ec2State.SHUTTING_DOWN in EC2_SUCCESSORS[state]
    assert EC2_SUCCESSORS[Ec2State.SHUTTING_DOWN] == frozenset({Ec2State.TERMINATED})


@pytest.mark.parametrize(
    ("status", "transitional"),
    [
        (WorkerStatus.PROVISIONING, True),
        (WorkerStatus.PENDING, True),
        (WorkerStatus.STOPPING, True),
        (WorkerStatus.TERMINATING, True),
        (WorkerStatus.RUNNING, False),
        (WorkerStatus.STOPPED, False),
        (WorkerStatus.TERMINATED, False),
        (WorkerStatus.FAILED, False),
        (WorkerStatus.UNKNOWN, False),
    ],
)
def test_only_in_between_statuses_are_transitional(
    status: WorkerStatus, transitional: bool
) -> None:
    assert is_transitional(status) is transitional
    assert (status in TRANSITIONAL_STATUSES) is transitional
