"""The hub on its own: fan-out, bounded buffers, cut-offs and shutdown."""

from __future__ import annotations

import asyncio
import json

import pytest

from relay.hub import Delivery, Hub, SubscriptionClosedError


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_every_subscriber_receives_every_frame_in_order() -> None:
    async def scenario() -> None:
        hub = Hub()
        first, second = hub.subscribe(), hub.subscribe()
        for frame in (b"a", b"b", b"c"):
            hub.publish(frame)
        assert await first.next_frames(1) == [b"a", b"b", b"c"]
        assert await second.next_frames(1) == [b"a", b"b", b"c"]
        assert hub.stats["deliveries"] == 6

    run(scenario())


def test_a_quiet_hub_returns_no_frames_after_the_wait() -> None:
    async def scenario() -> None:
        subscription = Hub().subscribe()
        assert await subscription.next_frames(0.01) == []

    run(scenario())


def test_a_waiting_subscriber_wakes_up_when_a_frame_is_published() -> None:
    async def scenario() -> None:
        hub = Hub()
        subscription = hub.subscribe()
        waiter = asyncio.create_task(subscription.next_frames(10))
        await asyncio.sleep(0)
        hub.publish(b"x")
        assert await asyncio.wait_for(waiter, 2) == [b"x"]

    run(scenario())


def test_a_slow_subscriber_is_cut_off_and_the_others_keep_receiving() -> None:
    async def scenario() -> None:
        hub = Hub(client_buffer_limit=3)
        slow, healthy = hub.subscribe(), hub.subscribe()
        for index in range(3):
            hub.publish(b"%d" % index)
        assert await healthy.next_frames(1) == [b"0", b"1", b"2"]
        hub.publish(b"3")  # slow's buffer is full: it is cut off
        assert slow.closed
        assert hub.client_count == 1
        assert hub.stats["cutoffs_slow_client"] == 1
        assert await healthy.next_frames(1) == [b"3"]
        with pytest.raises(SubscriptionClosedError) as closed:
            await slow.next_frames(1)
        assert closed.value.reason == "slow_client"
        assert closed.value.final_frame is None

    run(scenario())


def test_shutdown_delivers_what_is_queued_then_each_subscribers_own_final_frame() -> None:
    async def scenario() -> None:
        hub = Hub()
        first, second = hub.subscribe(), hub.subscribe()
        hub.publish(b"last event")
        closed = hub.shut_down(lambda s: b"bye " + s.client_id.encode())
        assert closed == 2
        assert not hub.accepting
        assert await first.next_frames(1) == [b"last event"]
        with pytest.raises(SubscriptionClosedError) as goodbye:
            await first.next_frames(1)
        assert goodbye.value.final_frame == b"bye " + first.client_id.encode()
        assert await second.next_frames(1) == [b"last event"]

    run(scenario())


def test_a_hub_that_is_shutting_down_accepts_no_new_subscribers() -> None:
    hub = Hub()
    hub.shut_down(lambda _: b"")
    with pytest.raises(RuntimeError, match="shutting down"):
        hub.subscribe()


def test_unsubscribing_twice_counts_one_disconnect() -> None:
    hub = Hub()
    subscription = hub.subscribe()
    hub.unsubscribe(subscription)
    hub.unsubscribe(subscription)
    assert hub.stats["disconnects"] == 1
    assert hub.client_count == 0


def metrics_delivery(worker: str, event_id: str, cpu: float) -> Delivery:
    wire = json.dumps({"id": event_id, "worker_id": worker, "data": {"cpu_utilization": cpu}})
    frame = f"id: {event_id}\nevent: worker.metrics.updated\ndata: {wire}\n\n".encode()
    return Delivery(
        event_id,
        "alice",
        frame,
        frame,
        worker_id=worker,
        event_type="worker.metrics.updated",
        metrics_of=worker,
        wire_json=wire,
    )


def test_metrics_for_one_worker_within_the_window_are_coalesced_to_the_newest() -> None:
    async def scenario() -> None:
        hub = Hub(metrics_window=0.05)
        subscription = hub.subscribe()
        hub.deliver(metrics_delivery("w-1", "e1", 10))
        hub.deliver(metrics_delivery("w-1", "e2", 20))
        (frame,) = await subscription.next_frames(1)
        assert frame.startswith(b"id: e2\nevent: worker.metrics.updated\n")
        assert b'"cpu_utilization": 20' in frame

    run(scenario())


def test_metrics_of_several_workers_go_out_as_one_batch_frame() -> None:
    async def scenario() -> None:
        hub = Hub(metrics_window=0.05)
        subscription = hub.subscribe()
        for index in range(3):
            hub.deliver(metrics_delivery(f"w-{index}", f"e{index}", 10 + index))
        (frame,) = await subscription.next_frames(1)
        assert frame.startswith(b"id: e2\nevent: worker.metrics.batch\ndata: ")
        data = json.loads(frame.decode().split("data: ", 1)[1])
        assert [e["worker_id"] for e in data["events"]] == ["w-0", "w-1", "w-2"]

    run(scenario())


def test_held_metrics_go_out_before_a_later_event_so_order_is_kept() -> None:
    async def scenario() -> None:
        hub = Hub(metrics_window=10)
        subscription = hub.subscribe()
        hub.deliver(metrics_delivery("w-1", "e1", 10))
        hub.publish(b"id: e2\nevent: worker.status.updated\ndata: {}\n\n", "e2")
        frames = await subscription.next_frames(1)
        assert [f.split(b"\n", 1)[0] for f in frames] == [b"id: e1", b"id: e2"]

    run(scenario())


def test_without_a_window_metrics_go_out_one_by_one() -> None:
    async def scenario() -> None:
        hub = Hub()
        subscription = hub.subscribe()
        hub.deliver(metrics_delivery("w-1", "e1", 10))
        hub.deliver(metrics_delivery("w-1", "e2", 20))
        assert len(await subscription.next_frames(1)) == 2

    run(scenario())


def test_a_subscriber_is_also_cut_off_when_its_buffer_exceeds_its_bytes() -> None:
    async def scenario() -> None:
        hub = Hub(client_buffer_limit=1000, client_buffer_bytes=10_000)
        slow, healthy = hub.subscribe(), hub.subscribe()
        hub.publish(b"x" * 6_000)
        assert await healthy.next_frames(1) == [b"x" * 6_000]
        hub.publish(b"y" * 6_000)  # slow now holds 12,000 bytes' worth: over its limit
        assert slow.closed
        assert hub.stats["cutoffs_slow_client"] == 1
        assert await healthy.next_frames(1) == [b"y" * 6_000]

    run(scenario())
