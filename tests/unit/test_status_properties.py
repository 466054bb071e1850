"""Properties of status changes: EC2 reports in any order and any number converge.

EventBridge delivers at least once and in any order. Whatever order the reports of one
instance's life arrive in, and however often each arrives, the worker must end in the
status of the newest report; its version must only go up, by one per event; and a
terminated worker must never change again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import tests.hypothesis_profiles  # noqa: F401 - loads the budget
from cmlfleet.domain.lifecycle import (
    IllegalTransitionError,
    request_start,
    request_stop,
    request_termination,
)
from cmlfleet.domain.status import EC2_SUCCESSORS, Ec2State, WorkerStatus, status_for_ec2_state
from cmlfleet.domain.worker import Worker, apply_ec2_state, register_worker
from cmlfleet.events.envelope import envelopes

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)  # when the reports are applied: after all of them happened


@dataclass(frozen=True)
class Report:
    state: str
    at: datetime


@st.composite
def lifecycles(draw: st.DrawFn, *, same_second: bool = False) -> list[Report]:
    """What EC2 reports over one instance's life: a walk along its own lifecycle.

    Each report is at least a second after the one before (EventBridge's resolution),
    unless `same_second`, when all of them carry the same second.
    """
    state = draw(st.sampled_from(Ec2State))
    reports, at = [], T0
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        reports.append(Report(state.value, at))
        successors = sorted(EC2_SUCCESSORS[state])
        if not successors:
            break
        state = draw(st.sampled_from(successors))
        if not same_second:
            at += timedelta(seconds=draw(st.integers(min_value=1, max_value=600)))
        at = at.replace(microsecond=draw(st.integers(min_value=0, max_value=999_999)))
    return reports


@st.composite
def deliveries(draw: st.DrawFn, reports: list[Report]) -> list[Report]:
    """The reports in any order, each at least once and maybe again later."""
    shuffled = draw(st.permutations(reports))
    again = draw(st.lists(st.sampled_from(reports), max_size=4))
    positions = [draw(st.integers(min_value=0, max_value=len(shuffled))) for _ in again]
    for position, report in zip(positions, again, strict=True):
        shuffled.insert(position, report)
    return shuffled


def a_worker(ec2_state: str | None = None, at: datetime = T0 - timedelta(hours=1)) -> Worker:
    """A worker as the API registered it: provisioning, or in the state EC2 then reported."""
    return register_worker(
        name="lab",
        owner="alice",
        now=at,
        instance_id="i-0123456789abcdef0",
        ec2_state=ec2_state,
        worker_id="w-1",
    ).worker


def deliver(worker: Worker, reports: list[Report]) -> Worker:
    """Apply the reports one by one, checking every change's versions on the way."""
    for report in reports:
        change = apply_ec2_state(worker, report.state, observed_at=report.at, now=NOW)
        if change is None:
            continue
        # One version per event; a newer report of the same status is saved without one.
        assert change.worker.version == worker.version + max(1, len(change.events))
        wire = envelopes(
            change.events, worker_id="w-1", owner="alice", version=change.worker.version, source="t"
        )
        versions = [event.workerversion for event in wire]
        assert versions == sorted(set(versions))
        assert all(worker.version < v <= change.worker.version for v in versions)
        assert not versions or versions[-1] == change.worker.version
        worker = change.worker
    return worker


@given(st.data(), lifecycles(), st.booleans())
@example(  # the same status again later; an in-between report delivered after it
    data=None,
    reports=[
        Report("running", T0),
        Report("stopping", T0 + timedelta(seconds=10)),
        Report("stopped", T0 + timedelta(seconds=20)),
        Report("pending", T0 + timedelta(seconds=30)),
        Report("running", T0 + timedelta(seconds=40)),
    ],
    registered=False,
).via("regression: running, then the later running, then stopped")
def test_reports_in_any_order_end_in_the_status_of_the_newest(
    data: st.DataObject | None, reports: list[Report], registered: bool
) -> None:
    if data is None:  # the explicit example: the order that lost the newest report
        delivered = [reports[0], reports[4], reports[2], reports[3], reports[1]]
    else:
        delivered = data.draw(deliveries(reports))
    worker = a_worker("running" if registered else None)

    final = deliver(worker, delivered)

    newest = reports[-1]
    assert final.status is status_for_ec2_state(newest.state)
    assert final.ec2_state == newest.state
    assert final.version >= worker.version


@given(
    st.lists(
        st.sampled_from([*[s.value for s in Ec2State if s != "terminated"], "rebooting", ""]),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_states_with_distinct_times_end_in_the_newest_even_unknown_ones(
    states: list[str], data: st.DataObject
) -> None:
    """Not only EC2's own lifecycle: any report newer by a second wins, terminated aside."""
    reports = [Report(state, T0 + timedelta(seconds=i)) for i, state in enumerate(states)]

    final = deliver(a_worker(), data.draw(deliveries(reports)))

    assert final.status is status_for_ec2_state(states[-1])


@given(lifecycles(same_second=True), st.data())
def test_two_steps_of_ec2_lifecycle_in_the_same_second_end_in_the_second(
    reports: list[Report], data: st.DataObject
) -> None:
    """Same timestamp: EC2's lifecycle tells which came first.

    Only for one step: three states in one second (pending, running, stopping) delivered
    as pending, stopping, running end in running, and no order rule can tell better.
    """
    assume(len(reports) >= 2)
    first, second = reports[-2:]

    final = deliver(a_worker(), data.draw(st.permutations([first, second])))

    assert final.status is status_for_ec2_state(second.state)


@given(st.data())
def test_a_terminated_worker_never_changes_again(data: st.DataObject) -> None:
    worker = deliver(a_worker("running"), [Report("terminated", T0)])
    assert worker.status is WorkerStatus.TERMINATED
    later = data.draw(
        st.lists(
            st.builds(
                Report,
                st.sampled_from([*[s.value for s in Ec2State], "rebooting"]),
                st.datetimes(
                    min_value=datetime(2000, 1, 1),
                    max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC),
                ),
            ),
            max_size=6,
        )
    )

    for report in later:
        assert apply_ec2_state(worker, report.state, observed_at=report.at, now=NOW) is None
    for command in (request_start, request_stop, request_termination):
        with pytest.raises(IllegalTransitionError):
            command(worker, by="ada", now=NOW)


@st.composite
def commands_and_reports(draw: st.DrawFn) -> list[Report | str]:
    reports: list[Report | str] = list(draw(deliveries(draw(lifecycles()))))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(reports)))
        reports.insert(position, draw(st.sampled_from(["start", "stop", "terminate"])))
    return reports


@given(commands_and_reports())
def test_versions_only_go_up_whatever_operators_and_ec2_do(steps: list[Report | str]) -> None:
    worker = a_worker()
    commands = {"start": request_start, "stop": request_stop, "terminate": request_termination}
    terminated = False
    for step in steps:
        if isinstance(step, Report):
            after = deliver(worker, [step])
        else:
            try:
                change = commands[step](worker, by="ada", now=NOW)
            except IllegalTransitionError:
                continue
            assert change.worker.version == worker.version + len(change.events)
            after = change.worker
        assert after.version >= worker.version
        if terminated:
            assert after == worker, "nothing changes a terminated worker"
        terminated = after.status is WorkerStatus.TERMINATED
        worker = after
