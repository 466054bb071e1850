"""Faults injected into the running local system; each test checks that no event is lost
(what a client saw against the DynamoDB event log) and that the final state is right.

Injected where the fault would really happen: the relay process killed with SIGKILL, the
SNS and DynamoDB clients the handlers use made to fail, CML hosts made to hang or fail,
EventBridge deliveries duplicated and reordered, a poison message put on the relay's own
queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from cmlfleet import bootstrap
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.domain.load import MetricsPolicy, MetricsSample, apply_metrics
from cmlfleet.services.changes import save_change
from cmlfleet.timeutil import utc_now
from devstack.ec2events import put_state_change, state_change_entry
from devstack.ec2sim import Delays
from devstack.fleetstack import FleetStack
from devstack.stack import ACCOUNT_ID
from relay.history import DynamoDbEventLog
from tests.localfleet import eventually, running_fleet
from tests.sse_client import SseEvent, SseStream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetStack]:
    with running_fleet(
        demo_workers=3,
        ec2_delays=Delays(boot=1.0, stop=1.0, terminate=1.0),
        run_schedules=False,  # the tests run the collectors themselves
        overrides={
            "POWERTOOLS_LOG_LEVEL": "CRITICAL",
            "CML_TIMEOUT_SECONDS": "1",  # a hanging host costs a run seconds, not tens
        },
    ) as stack:
        yield stack


def admin(fleet: FleetStack) -> dict[str, str]:
    assert fleet.issuer is not None
    return {"Authorization": f"Bearer {fleet.issuer.token('ada', 'admin')}"}


def api(fleet: FleetStack, method: str, path: str) -> Any:
    response = httpx.request(method, fleet.url + path, headers=admin(fleet), timeout=30)
    assert response.is_success, response.text
    return response.json()


def worker(fleet: FleetStack, name: str) -> dict[str, Any]:
    workers = api(fleet, "GET", "/api/workers")["workers"]
    return next(w for w in workers if w["name"] == name)


def status_of(fleet: FleetStack, worker_id: str) -> str:
    return str(api(fleet, "GET", f"/api/workers/{worker_id}")["status"])


def logged(fleet: FleetStack, worker_id: str) -> list[tuple[str, int]]:
    """The worker's events as the table keeps them (id, version), oldest first."""
    assert fleet.stack is not None
    log = DynamoDbEventLog(fleet.stack.outputs["WorkersTableName"], fleet.stack.client("dynamodb"))
    events = log.latest(utc_now() + timedelta(seconds=1), 2000)
    return [(e.id, e.workerversion) for e in events if e.subject == worker_id]


def seen(events: list[SseEvent], worker_id: str) -> list[tuple[str, int]]:
    """(id, version) of the worker's events among SSE frames, batches unpacked."""
    found = []
    for event in events:
        if not event.event.startswith("worker."):
            continue
        body = event.json()
        for wire in body["events"] if event.event == "worker.metrics.batch" else [body]:
            if wire["worker_id"] == worker_id:
                found.append((wire["id"], wire["version"]))
    return found


def collect_until(
    stream: SseStream, worker_id: str, until: Callable[[list[SseEvent]], bool]
) -> list[SseEvent]:
    events: list[SseEvent] = []
    while not until(events):
        events.append(stream.wait_for(lambda e: e.event != "heartbeat", timeout=30))
    return events


def reached(worker_id: str, status: str) -> Callable[[list[SseEvent]], bool]:
    def check(events: list[SseEvent]) -> bool:
        return any(
            e.event == "worker.status.updated"
            and e.json()["worker_id"] == worker_id
            and e.json()["data"]["new_status"] == status
            for e in events
        )

    return check


def ensure(fleet: FleetStack, name: str, status: str) -> dict[str, Any]:
    """The worker, brought to `running` or `stopped` first if it is not."""
    target = worker(fleet, name)
    if target["status"] != status:
        command = "start" if status == "running" else "stop"
        api(fleet, "POST", f"/api/workers/{target['worker_id']}/{command}")
        eventually(lambda: status_of(fleet, target["worker_id"]), status.__eq__)
    return worker(fleet, name)


class FailingFirst:
    """A boto3 client whose `operation` fails `times` times with `code`, then works."""

    def __init__(self, client: Any, operation: str, code: str, times: int) -> None:
        self._client, self._operation, self._code = client, operation, code
        self.remaining, self.failed = times, 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name != self._operation:
            return attribute

        def call(**kwargs: Any) -> Any:
            with self._lock:
                fail = self.remaining > 0
                if fail:
                    self.remaining -= 1
                    self.failed += 1
            if fail:
                raise ClientError({"Error": {"Code": self._code, "Message": "injected"}}, name)
            return attribute(**kwargs)

        return call


def stream(fleet: FleetStack, last_event_id: str | None = None) -> SseStream:
    headers = admin(fleet)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return SseStream(f"{fleet.url}/api/events/stream", headers=headers)


def assert_nothing_lost(
    events: list[SseEvent], fleet: FleetStack, worker_id: str, since: int
) -> None:
    """The client saw exactly the worker's logged events after version `since`, in order."""
    expected = [(i, v) for i, v in logged(fleet, worker_id) if v > since]
    got = [(i, v) for i, v in seen(events, worker_id) if v > since]  # (older ones may
    # still have been on their way when the client connected)
    assert got
    assert got == expected  # (versions may skip: a write without an event bumps it too)


def live_relay_queue(fleet: FleetStack) -> str:
    """The running relay's own queue: the newest (a killed relay's queue stays until the
    reaper comes for it)."""
    assert fleet.stack is not None
    sqs = fleet.stack.client("sqs")
    queues = sqs.list_queues(QueueNamePrefix="cmlfleet-relay-").get("QueueUrls", [])
    created = {
        url: float(
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])[
                "Attributes"
            ]["CreatedTimestamp"]
        )
        for url in queues
    }
    return max(created, key=lambda url: created[url])


# -- the relay ------------------------------------------------------------------------


def test_a_relay_killed_mid_stream_loses_nothing_for_a_client_that_resumes(
    fleet: FleetStack,
) -> None:
    assert fleet.relay is not None
    assert fleet.relay.process is not None
    target = ensure(fleet, "cml-lab-a", "running")
    worker_id, since = target["worker_id"], target["version"]
    with stream(fleet) as client:
        assert client.next().event == "connected"
        api(fleet, "POST", f"/api/workers/{worker_id}/stop")
        before = collect_until(client, worker_id, reached(worker_id, "stopping"))
        cursor = [e for e in before if e.id][-1].id
        fleet.relay.process.kill()  # SIGKILL: no goodbye, no queue cleanup
        fleet.relay.process.wait(10)
    # The fleet moves on while no relay runs: stopped, started again.
    eventually(lambda: status_of(fleet, worker_id), "stopped".__eq__)
    api(fleet, "POST", f"/api/workers/{worker_id}/start")
    eventually(lambda: status_of(fleet, worker_id), "running".__eq__)
    fleet.relay.start()
    with stream(fleet, last_event_id=cursor) as client:
        connected = client.next()
        assert connected.event == "connected"
        assert connected.json()["replay"]["status"] == "replayed"
        after = collect_until(client, worker_id, reached(worker_id, "running"))
    assert_nothing_lost(before + after, fleet, worker_id, since)
    assert status_of(fleet, worker_id) == "running"


def test_a_poison_message_on_the_relay_queue_goes_to_its_dead_letter_queue(
    fleet: FleetStack,
) -> None:
    assert fleet.stack is not None
    sqs = fleet.stack.client("sqs")
    relay_queue = live_relay_queue(fleet)
    dlq_arn = fleet.stack.outputs["RelayDeadLetterQueueArn"]
    dlq = sqs.get_queue_url(QueueName=dlq_arn.rsplit(":", 1)[1])["QueueUrl"]
    target = ensure(fleet, "cml-lab-b", "running")
    with stream(fleet) as client:
        assert client.next().event == "connected"
        sqs.send_message(QueueUrl=relay_queue, MessageBody='{"not": "a cloud event"')
        # Events keep flowing past it.
        api(fleet, "POST", f"/api/workers/{target['worker_id']}/stop")
        events = collect_until(client, target["worker_id"], reached(target["worker_id"], "stopped"))
    assert_nothing_lost(events, fleet, target["worker_id"], target["version"])

    def poison_in_dlq() -> list[str]:
        messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
        return [m["Body"] for m in messages]

    assert '{"not": "a cloud event"' in eventually(poison_in_dlq, bool, timeout=60)


# -- the handlers' AWS calls ----------------------------------------------------------


def test_sns_publishes_that_fail_are_retried_from_the_stream_and_nothing_is_lost(
    fleet: FleetStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = ensure(fleet, "cml-training", "running")
    publisher = bootstrap.event_publisher()
    flaky = FailingFirst(publisher._client, "publish", "InternalError", times=3)
    monkeypatch.setattr(publisher, "_client", flaky)
    with stream(fleet) as client:
        assert client.next().event == "connected"
        api(fleet, "POST", f"/api/workers/{target['worker_id']}/stop")
        events = collect_until(client, target["worker_id"], reached(target["worker_id"], "stopped"))
    assert flaky.failed == 3  # the fault really happened
    assert_nothing_lost(events, fleet, target["worker_id"], target["version"])


def test_a_write_that_loses_a_race_is_decided_again_and_both_changes_land(
    fleet: FleetStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real conditional conflict: a collector saves between the API's read and write."""
    target = ensure(fleet, "cml-lab-a", "running")
    worker_id = target["worker_id"]
    raced = threading.Event()
    original = DynamoDbWorkerRepository.save

    def racing_save(
        self: DynamoDbWorkerRepository, changed: Any, events: Any, *, expected_version: int
    ) -> None:
        if changed.worker_id == worker_id and not raced.is_set():
            raced.set()  # the first write of this worker: another writer gets in first
            current = self.get(worker_id)
            assert current is not None
            sample = MetricsSample(collected_at=utc_now(), cpu_utilization=97.0, running_nodes=7)
            save_change(
                self, current, lambda w: apply_metrics(w, sample, MetricsPolicy()), source="test"
            )
        original(self, changed, events, expected_version=expected_version)

    monkeypatch.setattr(DynamoDbWorkerRepository, "save", racing_save)
    with stream(fleet) as sse:
        assert sse.next().event == "connected"
        api(fleet, "POST", f"/api/workers/{worker_id}/stop")
        monkeypatch.undo()
        events = collect_until(sse, worker_id, reached(worker_id, "stopped"))
    assert raced.is_set()
    assert_nothing_lost(events, fleet, worker_id, target["version"])
    final = api(fleet, "GET", f"/api/workers/{worker_id}")
    assert final["status"] == "stopped"
    assert final["cpu_utilization"] == 97.0  # the collector's change survived
    types = [e.event for e in events if e.event.startswith("worker.")]
    assert types[0] == "worker.metrics.updated"  # it won the race, the stop came after


# -- EventBridge: duplicates and reordering --------------------------------------------


def test_duplicate_and_out_of_order_ec2_reports_converge_on_the_newest(fleet: FleetStack) -> None:
    assert fleet.stack is not None
    target = ensure(fleet, "cml-lab-b", "running")
    worker_id, instance_id = target["worker_id"], target["instance_id"]
    region, handler = fleet.stack.region, fleet.stack.functions["InstanceStateFunction"]
    events_client = fleet.stack.client("events")
    # Seconds clear of the reports that brought it to `running` (EventBridge times have
    # one-second resolution, and same-second reports are ordered by EC2's lifecycle).
    now = utc_now() + timedelta(seconds=3)
    with stream(fleet) as client:
        assert client.next().event == "connected"
        # The newer report first, then an older one, through the real bus: the older is
        # ignored.
        for state, at in (("stopped", now), ("stopping", now - timedelta(seconds=2))):
            put_state_change(
                events_client, instance_id, state, region=region, account=ACCOUNT_ID, time=at
            )
        events = collect_until(client, worker_id, reached(worker_id, "stopped"))
        # The same delivery twice (EventBridge is at-least-once): applied once. It says
        # `running`, which is where moto's instance still is.
        entry = state_change_entry(
            instance_id,
            "running",
            region=region,
            account=ACCOUNT_ID,
            time=now + timedelta(seconds=5),
        )
        delivery = _as_delivered(entry, ACCOUNT_ID)
        assert handler.invoke(delivery) == handler.invoke(delivery)
        events += collect_until(client, worker_id, reached(worker_id, "running"))
    assert_nothing_lost(events, fleet, worker_id, target["version"])
    statuses = [
        e.json()["data"]["new_status"]
        for e in events
        if e.event == "worker.status.updated"
        and e.json()["worker_id"] == worker_id
        and e.json()["version"] > target["version"]
    ]
    assert statuses == ["stopped", "running"]  # never back to stopping; running once
    assert status_of(fleet, worker_id) == "running"


# -- CML ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["hang", "error"])
def test_a_cml_host_that_hangs_or_fails_costs_only_its_own_numbers(
    fleet: FleetStack, fault: str
) -> None:
    assert fleet.cml is not None
    assert fleet.stack is not None
    victim = ensure(fleet, "cml-lab-a", "running")
    other = ensure(fleet, "cml-lab-b", "running")
    collector = fleet.stack.functions["MetricsCollectorFunction"]
    host = fleet.cml.worker(other["instance_id"])
    host.idle_cpu += 45 if host.cpu_percent() < 50 else -45  # a change worth reporting
    fleet.cml.set_fault(victim["instance_id"], fault)  # type: ignore[arg-type]
    try:
        fleet._feed_cloudwatch()
        result = collector.invoke({})
    finally:
        fleet.cml.set_fault(victim["instance_id"], "none")
    assert list(result["failed"]) == [victim["worker_id"]]
    assert worker(fleet, "cml-lab-b")["version"] > other["version"]  # measured all the same
    # Its circuit is open now; once its cooldown has passed (aged here, as the breaker's
    # own tests do with their clock) and the host is healthy, the next run measures it.
    for circuit in bootstrap._cml_shared("MetricsCollectorFunction").circuits.values():
        if circuit.opened_at is not None:
            circuit.opened_at -= 3600
    host = fleet.cml.worker(victim["instance_id"])
    host.idle_cpu += 45 if host.cpu_percent() < 50 else -45
    fleet._feed_cloudwatch()
    assert collector.invoke({})["failed"] == {}
    assert worker(fleet, "cml-lab-a")["version"] > victim["version"]


def _as_delivered(entry: dict[str, Any], account: str) -> dict[str, Any]:
    """A PutEvents entry as EventBridge hands it to a Lambda target."""
    import json
    import uuid

    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": entry["DetailType"],
        "source": entry["Source"],
        "account": account,
        "time": entry["Time"].strftime("%Y-%m-%dT%H:%M:%SZ")
        if hasattr(entry["Time"], "strftime")
        else entry["Time"],
        "region": entry.get("Region", "us-east-1"),
        "resources": entry.get("Resources", []),
        "detail": json.loads(entry["Detail"]),
    }
