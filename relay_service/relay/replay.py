"""What a reconnecting client is sent: the replay policy over the ring and the event log.

The flow is drawn in ARCHITECTURE.md ("Replay"). Every answer is decided on the events
themselves before anything is framed, and costs at most `RELAY_REPLAY_MAX` events read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from aws_lambda_powertools import Logger

from cmlfleet.events.envelope import CloudEvent
from cmlfleet.timeutil import utc_now
from relay.frames import receives
from relay.history import DynamoDbEventLog, EventRing, Replay, TooManyMissedError
from relay.hub import Subscription
from relay.limits import Allowance, BoundedExecutor, BusyError, principal_key
from relay.observability import LatencyWindow, tracer
from relay.settings import RelaySettings

logger = Logger(child=True)

NOT_KEPT = "the events after your last one are no longer kept"


class Replayer:
    """Answers `Last-Event-ID`s: rationed per principal, capped, filtered per client."""

    def __init__(
        self,
        settings: RelaySettings,
        ring: EventRing,
        event_log: DynamoDbEventLog | None,
        stats: Counter[str],
    ) -> None:
        self.ring, self.event_log, self._stats = ring, event_log, stats
        self._cap = settings.relay_replay_max
        self._allowance = Allowance(settings.relay_replays_per_minute)
        threads = settings.relay_replay_threads
        self.executor = BoundedExecutor("relay-replay", threads, 8 * threads)
        self.latency = LatencyWindow()

    async def replay(self, cursor: str | None, subscription: Subscription) -> Replay:
        """What this client missed since `cursor` and may receive, or why it must resync.

        At most `RELAY_REPLAY_MAX` events are read, from the ring or the event log, and
        only those the client receives are returned. A cursor the client could not have
        been sent is answered as one that was never kept, so ids tell nothing of others.
        """
        if not cursor:
            return Replay("none", [])
        if not self._allowance.take(principal_key(subscription.principal)):
            self._stats["replays_refused_rate"] += 1
            return Replay("resync", [], "too many reconnects with a cursor; fetch the state")
        with tracer.start_as_current_span("relay.replay") as span:
            started = time.perf_counter()
            try:
                replay = await self._replay(cursor, lambda event: receives(subscription, event))
            except TooManyMissedError:
                self._stats["replays_over_cap"] += 1
                replay = Replay("resync", [], "more events were missed than are replayed")
            except BusyError:
                self._stats["replays_refused_busy"] += 1
                replay = Replay("resync", [], "the relay is busy; fetch the state")
            self.latency.add(time.perf_counter() - started)
            span.set_attribute("cmlfleet.replay.status", replay.status)
            span.set_attribute("cmlfleet.replay.events", len(replay.events))
            return replay

    async def _replay(self, cursor: str, gets: Callable[[CloudEvent], bool]) -> Replay:
        last_seen = self.ring.get(cursor)
        if last_seen is not None:
            missed = self.ring.after(cursor, self._cap) if gets(last_seen) else None
            if missed is not None:
                self._stats["replay_ring_hits"] += 1
                return Replay("replayed", [event for event in missed if gets(event)])
        elif self.event_log is not None:
            logged = await self._from_log(self.event_log, cursor, gets)
            if logged is not None:
                self._stats["replay_log_hits"] += 1
                return Replay("replayed", [event for event in logged if gets(event)])
        self._stats["replay_misses"] += 1
        return Replay("resync", [], NOT_KEPT)

    async def _from_log(
        self, event_log: DynamoDbEventLog, cursor: str, gets: Callable[[CloudEvent], bool]
    ) -> list[CloudEvent] | None:
        now = utc_now()
        try:
            return await self.executor.run(lambda: event_log.after(cursor, now, admit_cursor=gets))
        except (TooManyMissedError, BusyError):
            raise
        except Exception:
            logger.exception("event log unavailable for replay")
            return None
