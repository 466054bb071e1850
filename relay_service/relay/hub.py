"""The hub: fans frames out to subscribers. It knows neither HTTP nor SQS.

Every subscriber has a buffer bounded in frames and in bytes. `publish` never waits: a
subscriber whose buffer is full is cut off (it reconnects and resumes from its last event
id), so one slow client can never hold up the others. Everything here runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from cmlfleet.access import may_see
from cmlfleet.identity import Principal
from relay.sse import ServerSentEvent

METRICS_EVENT = "worker.metrics.updated"
METRICS_BATCH_EVENT = "worker.metrics.batch"


class SubscriptionClosedError(Exception):
    """The subscription ended; `final_frame`, if any, is the last thing to send."""

    def __init__(self, reason: str, final_frame: bytes | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final_frame = final_frame


@dataclass(frozen=True)
class Delivery:
    """One bus event, framed for each kind of reader: who may see it decides which frame.

    `masked` is the frame for a reader who owns the worker but may not see AWS-internal
    fields; readers who see everything get `full`; everyone else gets nothing.
    """

    event_id: str
    owner: str
    full: bytes
    masked: bytes
    worker_id: str = ""
    event_type: str = ""
    metrics_of: str | None = None  # a metrics event's worker id: it may be coalesced
    wire_json: str = ""  # its wire object as one JSON line, for a batch frame
    owner_sub: str | None = None  # the owner's `sub`, when known (access.may_see)


@dataclass(frozen=True)
class Interest:
    """What a client asked for (`worker_ids`, `event_types`); empty means everything."""

    worker_ids: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()

    def wants(self, delivery: Delivery) -> bool:
        return self.wants_kind(delivery.worker_id, delivery.event_type)

    def wants_kind(self, worker_id: str, event_type: str) -> bool:
        if self.worker_ids and worker_id not in self.worker_ids:
            return False
        return not self.event_types or event_type in self.event_types


class Subscription:
    """One connected client's bounded buffer of frames, and what it may see."""

    def __init__(
        self,
        limit: int,
        principal: Principal | None = None,
        metrics_window: float = 0.0,
        interest: Interest | None = None,
        byte_limit: int = 4 * 1024 * 1024,
    ) -> None:
        self.client_id = uuid.uuid4().hex
        self._byte_limit = byte_limit
        self._bytes = 0
        self.principal = principal
        self.interest = interest or Interest()
        # Metrics events wait this long to be coalesced per worker into one batch frame.
        self._metrics_window = metrics_window
        self._pending_metrics: dict[str, tuple[str, str]] = {}  # worker → (event id, json)
        self._pending_since = 0.0
        self._limit = limit
        self._frames: deque[tuple[str | None, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._closed: SubscriptionClosedError | None = None
        self._skip: set[str] = set()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def depth(self) -> int:
        return len(self._frames) + len(self._pending_metrics)

    def offer(self, frame: bytes, event_id: str | None = None) -> bool:
        """Queue a frame; `False` if the buffer is full (the caller decides what follows)."""
        if self._closed is not None or (event_id is not None and event_id in self._skip):
            return True
        if len(self._frames) >= self._limit or self._bytes + len(frame) > self._byte_limit:
            return False
        self._flush_metrics()  # what came before goes out before: order is kept
        self._frames.append((event_id, frame))
        self._bytes += len(frame)
        self._wakeup.set()
        return True

    def offer_metrics(self, worker_id: str, event_id: str, wire_json: str) -> bool:
        """Hold a metrics event for the window; a newer one for the same worker replaces it."""
        if self._closed is not None or event_id in self._skip:
            return True
        if not self._pending_metrics:
            self._pending_since = time.monotonic()
        self._pending_metrics.pop(worker_id, None)
        self._pending_metrics[worker_id] = (event_id, wire_json)
        self._wakeup.set()
        return len(self._frames) < self._limit

    def _flush_metrics(self) -> None:
        if not self._pending_metrics:
            return
        pending = list(self._pending_metrics.values())
        self._pending_metrics.clear()
        if len(pending) == 1:
            event_id, wire_json = pending[0]
            frame = ServerSentEvent(id=event_id, event=METRICS_EVENT, data=wire_json).encode()
        else:
            events = ",".join(wire for _, wire in pending)
            frame = ServerSentEvent(
                id=pending[-1][0], event=METRICS_BATCH_EVENT, data='{"events":[' + events + "]}"
            ).encode()
        self._frames.append((pending[-1][0], frame))
        self._bytes += len(frame)

    def frame_for(self, delivery: Delivery) -> bytes | None:
        """This client's frame of the event, or None if it may not see it at all."""
        if not self.interest.wants(delivery):
            return None
        principal = self.principal
        if principal is None or principal.sees_everything:
            return delivery.full
        if may_see(principal, delivery.owner, delivery.owner_sub):
            return delivery.masked
        return None

    def skip(self, event_ids: set[str]) -> None:
        """Never deliver these events live: the client got them by replay.

        The subscription is registered before history is read, so an event can arrive
        both ways; this drops the live copy, queued or yet to come.
        """
        self._skip |= event_ids
        self._frames = deque((i, f) for i, f in self._frames if i is None or i not in self._skip)
        self._bytes = sum(len(f) for _, f in self._frames)
        self._pending_metrics = {
            w: (i, j) for w, (i, j) in self._pending_metrics.items() if i not in self._skip
        }

    def close(self, reason: str, final_frame: bytes | None = None) -> None:
        """End the subscription after what is queued; `final_frame` goes out last."""
        if self._closed is None:
            self._closed = SubscriptionClosedError(reason, final_frame)
            self._wakeup.set()

    async def next_frames(self, quiet_seconds: float) -> list[bytes]:
        """Every queued frame (maybe none, after `quiet_seconds` without any).

        Raises `SubscriptionClosedError` once the subscription is closed and drained;
        a cut-off drops what is queued, a shutdown delivers it first.
        """
        if not self._frames and not self._pending_metrics and self._closed is None:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), quiet_seconds)
            except TimeoutError:
                return []
        if self._pending_metrics and not self._frames and self._closed is None:
            # Only metrics waiting: give the other workers' numbers a moment to join them.
            left = self._metrics_window - (time.monotonic() - self._pending_since)
            if left > 0:
                await asyncio.sleep(left)
        self._flush_metrics()
        if self._closed is not None and (self._closed.reason != "shutdown" or not self._frames):
            raise self._closed
        frames = [frame for _, frame in self._frames]
        self._frames.clear()
        self._bytes = 0
        return frames


class Hub:
    """Subscribers and fan-out; counts what happened for the metrics endpoint."""

    def __init__(
        self,
        client_buffer_limit: int = 1000,
        metrics_window: float = 0.0,
        client_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._limit = client_buffer_limit
        self._byte_limit = client_buffer_bytes
        self._metrics_window = metrics_window
        self._subscriptions: dict[str, Subscription] = {}
        self.accepting = True
        self.stats: Counter[str] = Counter()

    @property
    def client_count(self) -> int:
        return len(self._subscriptions)

    def queue_depths(self) -> list[int]:
        """Frames waiting per client (what backpressure watches)."""
        return [s.depth for s in self._subscriptions.values()]

    def subscribe(
        self, principal: Principal | None = None, interest: Interest | None = None
    ) -> Subscription:
        if not self.accepting:
            raise RuntimeError("the hub is shutting down")
        subscription = Subscription(
            self._limit, principal, self._metrics_window, interest, self._byte_limit
        )
        self._subscriptions[subscription.client_id] = subscription
        self.stats["connects"] += 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if self._subscriptions.pop(subscription.client_id, None) is not None:
            self.stats["disconnects"] += 1

    def publish(self, frame: bytes, event_id: str | None = None) -> None:
        """Offer one frame to every subscriber as it is (relay-wide notices, tests)."""
        self.stats["published"] += 1
        for subscription in list(self._subscriptions.values()):
            self._offer(subscription, frame, event_id)

    def deliver(self, delivery: Delivery) -> None:
        """Offer an event to every subscriber that may see it, in the form it may see."""
        self.stats["published"] += 1
        for subscription in list(self._subscriptions.values()):
            frame = subscription.frame_for(delivery)
            if frame is None:
                self.stats["filtered"] += 1
            elif delivery.metrics_of is not None and self._metrics_window > 0:
                if subscription.offer_metrics(
                    delivery.metrics_of, delivery.event_id, delivery.wire_json
                ):
                    self.stats["deliveries"] += 1
                else:
                    self._cut_off(subscription)
            else:
                self._offer(subscription, frame, delivery.event_id)

    def _offer(self, subscription: Subscription, frame: bytes, event_id: str | None) -> None:
        if subscription.offer(frame, event_id):
            self.stats["deliveries"] += 1
        else:
            self._cut_off(subscription)

    def _cut_off(self, subscription: Subscription) -> None:
        self.stats["cutoffs_slow_client"] += 1
        subscription.close("slow_client")
        self.unsubscribe(subscription)

    def shut_down(self, final_frame: Callable[[Subscription], bytes]) -> int:
        """Stop accepting and close every subscriber with its own final frame."""
        self.accepting = False
        subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            subscription.close("shutdown", final_frame(subscription))
        return len(subscriptions)
