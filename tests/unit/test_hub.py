"""The hub on its own: fan-out, bounded buffers, cut-offs and shutdown."""

from __future__ import annotations

import asyncio

import pytest

from relay.hub import Hub, SubscriptionClosedError


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
