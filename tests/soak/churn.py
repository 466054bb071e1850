"""The soak's clients and publisher, and what they check: every event a client was entitled to.

A fresh connection is entitled to every event whose publishing began after its `connected`
frame; a resumed one, to every event after its `Last-Event-ID`; both up to the newest
event whose publishing had finished when its client decided to drop it. An event missing,
seen twice, replayed although already seen, or out of version order for its worker is a
failure, as is a stream that ends or stalls before its client drops it. The run around
them (the relay, sampling, the memory bound) is `benchmarks/soak.py`.
"""

from __future__ import annotations

import codecs
import http.client
import json
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.events.catalog import WorkerStatusUpdated
from cmlfleet.events.envelope import make_event
from tests.sse_client import SseParser

STREAM_PATH = "/api/events/stream"
READ_TIMEOUT = 10.0  # heartbeats come every plan.heartbeat_seconds: silence this long is a stall


@dataclass(frozen=True)
class SoakPlan:
    seconds: float = 300.0
    clients: int = 100  # connections open at any time (each one a thread)
    rate: float = 15.0  # events per second; moto's SQS slows down if its queue backs up
    workers: int = 5
    min_life: float = 0.5  # how long a connection reads before its client drops it
    max_life: float = 3.0
    resume_share: float = 0.4  # reconnects that resume with Last-Event-ID
    max_offline: float = 2.0  # a resuming client stays away up to this long: it has missed
    # events, which the relay must replay (from its ring: 100 events last ~6 s here)
    reset_share: float = 0.3  # drops by TCP reset (SO_LINGER 0) rather than a clean close
    # The ring is bounded by design; this one fills in seconds, so its legitimate growth is
    # not read as a slope (the default 10,000 takes 11 min to fill at 15 events/s).
    ring_size: int = 100
    heartbeat_seconds: float = 2.0
    catch_up_seconds: float = 10.0  # how long a dropping client waits for its last events
    fd_margin: int = 2
    seed: int = 8
    # The slope is fitted once the clients have made this many connections: the relay's
    # RSS climbs over its first ~800 (the first passes of its deferred garbage collector,
    # the allocator's arenas), however fast they come, then only creeps.
    warmup_connections: int = 1000
    min_window_seconds: float = 10.0


class Ledger:
    """What the clients checked and every failure they saw (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "connections",
                "resumed",
                "replayed",
                "reset_drops",
                "deliveries_checked",
                "received",
                "missing",
            ),
            0,
        )
        self.failures = 0
        self.examples: list[str] = []

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self.counts[name] += value

    def fail(self, message: str) -> None:
        with self._lock:
            self.failures += 1
            if len(self.examples) < 20:
                self.examples.append(message)


class Publisher:
    """Publishes events at a steady rate; `started` and `finished` count them in order."""

    def __init__(self, sns: Any, topic_arn: str, plan: SoakPlan, ledger: Ledger) -> None:
        self._sns = SnsEventPublisher(topic_arn, sns)
        self._plan, self._ledger = plan, ledger
        self.seq_of: dict[str, int] = {}  # event id → its place in publishing order
        self.versions: list[tuple[str, int]] = []  # seq → (worker id, version)
        self.started = self.finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            seq = self.started
            worker = f"w-soak-{seq % self._plan.workers}"
            version = seq // self._plan.workers + 1
            payload = WorkerStatusUpdated(
                worker_id=worker,
                old_status="running",
                new_status="stopping",
                ec2_state="stopping",
                transition_started_at=None,
                reason=f"soak #{seq}",
            )
            event = make_event(payload, worker_id=worker, version=version, owner="soak")
            self.seq_of[event.id] = seq
            self.versions.append((worker, version))
            self.started = seq + 1
            try:
                self._sns.publish(event)
            except Exception as error:  # the run is void: report it rather than carry on
                self._ledger.fail(f"publishing event #{seq} failed: {error!r}")
                return
            self.finished = seq + 1
            # A steady rate, never a burst to catch up: a backed-up queue slows moto down.
            next_at = max(next_at + 1 / self._plan.rate, time.monotonic())
            self._stop.wait(next_at - time.monotonic())


@dataclass
class Session:
    """One connection's entitlement and what it received."""

    floor: int  # the first event it is entitled to
    after: int | None  # the seq of its Last-Event-ID, when resuming
    replayed: int = 0  # how many events the relay said it replayed
    ceiling: int | None = None  # one past the last event it is entitled to
    received: set[int] = field(default_factory=set)
    last_version: dict[str, int] = field(default_factory=dict)
    next_needed: int = 0

    def __post_init__(self) -> None:
        self.next_needed = self.floor

    def covered(self) -> bool:
        assert self.ceiling is not None
        while self.next_needed < self.ceiling and self.next_needed in self.received:
            self.next_needed += 1
        return self.next_needed >= self.ceiling


class ChurnClient:
    """One client slot: connect, read, check, drop, again, until the soak ends."""

    def __init__(
        self, index: int, port: int, publisher: Publisher, ledger: Ledger, plan: SoakPlan
    ) -> None:
        self._port, self._publisher, self._ledger, self._plan = port, publisher, ledger, plan
        self._rng = random.Random(plan.seed * 100_003 + index)
        self._cursor: str | None = None  # the last event id of this client's current chain
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"soak-client-{index}", daemon=True)

    def _run(self) -> None:
        # Staggered starts: the drops are spread out from the first second on.
        self.stopping.wait(self._rng.uniform(0, self._plan.max_life))
        while not self.stopping.is_set():
            if self._rng.random() >= self._plan.resume_share:
                self._cursor = None  # a fresh client, entitled only to what comes next
            elif self.stopping.wait(self._rng.uniform(0, self._plan.max_offline)):
                return
            self._connect_once()

    def _connect_once(self) -> None:
        cursor, reset = self._cursor, self._rng.random() < self._plan.reset_share
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=READ_TIMEOUT)
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": cursor} if cursor else {})
        try:
            connection.request("GET", STREAM_PATH, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                self._ledger.fail(f"stream answered {response.status}")
                return
            session = self._read(response, cursor)
            if session is not None:
                self._settle(session, resumed=cursor is not None, reset=reset)
        except (OSError, http.client.HTTPException) as error:
            self._ledger.fail(f"stream failed before the client dropped it: {error!r}")
        finally:
            if reset and connection.sock is not None:
                # SO_LINGER 0: close() sends RST, as when a network path dies.
                linger = struct.pack("ii", 1, 0)
                connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            connection.close()

    def _read(self, response: http.client.HTTPResponse, cursor: str | None) -> Session | None:
        parser, session = SseParser(), None
        decoder = codecs.getincrementaldecoder("utf-8")()  # a chunk may end inside a character
        drop_at = give_up_at = 0.0
        while True:
            chunk = response.read1(65536)
            if not chunk:
                self._ledger.fail("the relay ended a stream its client had not dropped")
                return None
            for event in parser.feed(decoder.decode(chunk)):
                if session is None:
                    session = self._open(event.event, event.data, cursor)
                    if session is None:
                        return None
                    drop_at = time.monotonic() + self._rng.uniform(
                        self._plan.min_life, self._plan.max_life
                    )
                elif event.id is not None:
                    self._receive(session, event.id)
            now = time.monotonic()
            if session is None or (now < drop_at and not self.stopping.is_set()):
                continue
            if session.ceiling is None:
                session.ceiling = self._publisher.finished
                give_up_at = now + self._plan.catch_up_seconds
            if session.covered() or now > give_up_at:
                return session

    def _open(self, name: str, data: str, cursor: str | None) -> Session | None:
        if name != "connected":
            self._ledger.fail(f"first frame was {name!r}, not connected")
            return None
        replay, expected = json.loads(data)["replay"], "replayed" if cursor else "none"
        if replay["status"] != expected:
            self._ledger.fail(f"resuming from {cursor}: replay {replay['status']!r}")
            return None
        if cursor is None:
            return Session(floor=self._publisher.started, after=None)
        after = self._publisher.seq_of[cursor]
        return Session(floor=after + 1, after=after, replayed=replay["replayed"])

    def _receive(self, session: Session, event_id: str) -> None:
        seq = self._publisher.seq_of.get(event_id)
        if seq is None:
            self._ledger.fail(f"an event nobody published: {event_id}")
            return
        if seq in session.received:
            self._ledger.fail(f"event #{seq} delivered twice on one connection")
        if session.after is not None and seq <= session.after:
            self._ledger.fail(f"event #{seq} replayed after Last-Event-ID #{session.after}")
        worker, version = self._publisher.versions[seq]
        if version <= session.last_version.get(worker, 0):
            self._ledger.fail(f"{worker} v{version} after v{session.last_version[worker]}")
        session.last_version[worker] = version
        session.received.add(seq)
        self._cursor = event_id

    def _settle(self, session: Session, *, resumed: bool, reset: bool) -> None:
        assert session.ceiling is not None
        entitled = range(session.floor, session.ceiling)
        missing = [seq for seq in entitled if seq not in session.received]
        if missing:
            where = f"after #{session.after}" if resumed else f"from #{session.floor}"
            self._ledger.fail(f"{len(missing)} events missing ({where}): first #{missing[0]}")
        self._ledger.add(
            missing=len(missing),
            connections=1,
            resumed=int(resumed),
            replayed=session.replayed,
            reset_drops=int(reset),
            deliveries_checked=len(entitled),
            received=len(session.received),
        )
