"""Server A: the relay as `python -m relay` runs it, fed from a loopback control socket.

Everything but the bus is production's: `create_app`, the authenticator of
`relay.__main__` (anonymous admin, as RELAY_ANONYMOUS_ROLE=admin does), `RelayServer`
under uvicorn with the same config. The bus is `ControlBus`: a thread that reads event
batches from one TCP connection on 127.0.0.1 (one CloudEvent JSON per line, a blank line
ends a batch), parses them as the SQS bus does and hands them to the relay's sink.

Lines starting with "!" are commands (JSON), answered with one JSON line: `stats`
(hub counters; the addresses the per-address limits count, as the relay saw them),
`objects` (live objects by type, for per-connection memory), `profile_start` /
`profile_stop` (cProfile, started from the event loop's thread; on Python 3.12, where
it rides on `sys.monitoring`, it records every thread's calls, wall-clock, interleaved).

With `--jwks FILE --oidc-issuer URL --oidc-audience AUD` clients must send bearer
tokens, verified as `relay.__main__` verifies them (`TokenVerifier`), with the keys from
FILE (`StaticSigningKeys`) instead of a JWKS URL; nobody is let in anonymously. Any other
setting (`RELAY_REPLAY_MAX`, say) comes from the environment, as in production.

Usage: python -m benchmarks.relaybench.relay_server --port P --control-port C
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import pstats
import socket
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.relaybench.common import LOOPBACK, raise_nofile, watchdog
from cmlfleet.events.envelope import CloudEvent

MAX_LINE = 1_000_000


class GcPauses:
    """Counts and times the garbage collector's passes, per generation (observation only)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.by_generation = {g: {"count": 0, "total_s": 0.0, "max_s": 0.0} for g in (0, 1, 2)}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = time.perf_counter() - self.started
        entry = self.by_generation[info["generation"]]
        entry["count"] += 1
        entry["total_s"] += took
        entry["max_s"] = max(entry["max_s"], took)


GC_PAUSES = GcPauses()


class ControlBus:
    """The relay's `EventBus`, whose input is a loopback control socket."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._last_receive = time.monotonic()
        self._profiler: cProfile.Profile | None = None
        self._trace_base: tracemalloc.Snapshot | None = None
        self.relay: Any = None  # the running `Relay`, for the commands
        self.batches = 0
        self.http_impl = "?"
        self.freeze_gc = False

    def open(self) -> None:
        self._server = socket.create_server((LOOPBACK, self._port))
        self._server.settimeout(0.5)

    def start(self, sink: Callable[[list[CloudEvent]], None]) -> None:
        if self.freeze_gc:  # the app is built and started: keep its objects out of GC passes
            gc.freeze()
        self._thread = threading.Thread(
            target=self._serve, args=(sink,), name="bench-control-bus", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        for sock in (self._conn, self._server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def seconds_since_receive(self) -> float | None:
        return 0.0  # never "unavailable": the health check stays green

    def _serve(self, sink: Callable[[list[CloudEvent]], None]) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._conn = conn
            try:
                self._read(conn, sink)
            except OSError:
                pass
            finally:
                conn.close()
                self._conn = None

    def _read(self, conn: socket.socket, sink: Callable[[list[CloudEvent]], None]) -> None:
        reader = conn.makefile("rb")
        batch: list[CloudEvent] = []
        while not self._stop.is_set():
            line = reader.readline(MAX_LINE)
            if not line:
                return
            if line == b"\n":
                if batch:
                    self._last_receive = time.monotonic()
                    self.batches += 1
                    sink(batch)
                    batch = []
            elif line.startswith(b"!"):
                reply = self._command(json.loads(line[1:]))
                conn.sendall(json.dumps(reply).encode() + b"\n")
            else:
                batch.append(CloudEvent.from_json(line))

    # --- commands, run on the event loop's thread -----------------------------------------

    def _command(self, command: dict[str, Any]) -> Any:
        name = command.get("cmd")
        handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "stats": self._stats,
            "objects": self._objects,
            "profile_start": self._profile_start,
            "profile_stop": self._profile_stop,
            "gc_collect": self._gc_collect,
            "trace_start": self._trace_start,
            "trace_diff": self._trace_diff,
        }
        handler = handlers.get(str(name))
        if handler is None or self.relay is None or self.relay._loop is None:
            return {"error": f"unknown command or relay not started: {name!r}"}

        async def run() -> Any:
            return handler(command)

        future = asyncio.run_coroutine_threadsafe(run(), self.relay._loop)
        return future.result(timeout=60)

    def _stats(self, _: dict[str, Any]) -> Any:
        hub = self.relay.hub
        depths = hub.queue_depths()
        return {
            "clients": hub.client_count,
            "ring_events": len(self.relay.ring),
            "stats": dict(hub.stats),
            "queue_depth_max": max(depths, default=0),
            "queue_depth_total": sum(depths),
            "batches": self.batches,
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "loop": type(asyncio.get_running_loop()).__module__,
            "http": self.http_impl,
            "gc": {str(g): dict(v) for g, v in GC_PAUSES.by_generation.items()},
            "gc_setting": {"enabled": gc.isenabled(), "threshold": gc.get_threshold()},
            "limits": self._limits(),
        }

    def _limits(self) -> dict[str, Any]:
        """Whom the relay's limits count: open streams per client address (the address as
        the relay saw it, `scope["client"]`), and the addresses whose connects it rations."""
        streams = getattr(self.relay.address_streams, "_open", {})
        connects = getattr(self.relay.connects, "_buckets", {})
        return {
            "streams_by_address": dict(sorted(streams.items())[:200]),
            "connect_addresses": sorted(connects)[:200],
        }

    def _objects(self, command: dict[str, Any]) -> Any:
        gc.collect()
        counts = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        top = int(command.get("top", 60))
        return {"total": sum(counts.values()), "by_type": dict(counts.most_common(top))}

    def _gc_collect(self, _: dict[str, Any]) -> Any:
        """Time one full collection: how long every stream stalls when the GC runs one."""
        started = time.perf_counter()
        gc.collect()
        return {
            "full_gc_ms": round((time.perf_counter() - started) * 1000, 1),
            "tracked_objects": len(gc.get_objects()),
        }

    def _trace_start(self, command: dict[str, Any]) -> Any:
        tracemalloc.start(int(command.get("frames", 1)))
        self._trace_base = tracemalloc.take_snapshot()
        return {"ok": True}

    def _trace_diff(self, command: dict[str, Any]) -> Any:
        """Python allocations made since `trace_start`, by source line, per connection."""
        if self._trace_base is None:
            return {"error": "not tracing"}
        snapshot = tracemalloc.take_snapshot()
        per = max(1, int(command.get("per", 1)))
        diff = snapshot.compare_to(self._trace_base, "lineno")
        total = sum(d.size_diff for d in diff)
        lines = [
            {
                "where": f"{d.traceback[0].filename}:{d.traceback[0].lineno}",
                "bytes_per_conn": round(d.size_diff / per, 1),
                "blocks_per_conn": round(d.count_diff / per, 2),
            }
            for d in diff[: int(command.get("top", 40))]
        ]
        by_file = [
            {"file": d.traceback[0].filename, "bytes_per_conn": round(d.size_diff / per, 1)}
            for d in snapshot.compare_to(self._trace_base, "filename")[:25]
        ]
        tracemalloc.stop()
        self._trace_base = None
        return {"total_bytes_per_conn": round(total / per, 1), "top": lines, "by_file": by_file}

    def _profile_start(self, _: dict[str, Any]) -> Any:
        self._profiler = cProfile.Profile()
        self._profiler.enable()
        return {"ok": True}

    def _profile_stop(self, command: dict[str, Any]) -> Any:
        if self._profiler is None:
            return {"error": "not profiling"}
        self._profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(self._profiler, stream=out)
        if command.get("path"):
            stats.dump_stats(str(command["path"]))
        stats.sort_stats("tottime").print_stats(int(command.get("top", 40)))
        self._profiler = None
        return {"text": out.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--jwks", help="bearer tokens only, signed with these keys (JSON)")
    parser.add_argument("--oidc-issuer", default="", help="with --jwks: the tokens' issuer")
    parser.add_argument("--oidc-audience", default="", help="with --jwks: their audience")
    parser.add_argument(
        "--gc",
        default="",
        help="what-if, not production: 'off' (gc.disable), 'freeze' (gc.freeze at start) "
        "or thresholds 'g0,g1,g2'",
    )
    args = parser.parse_args()
    raise_nofile()
    watchdog(args.max_seconds)
    gc.callbacks.append(GC_PAUSES)
    if args.gc == "off":
        gc.disable()
    elif args.gc and args.gc != "freeze":
        gc.set_threshold(*(int(x) for x in args.gc.split(",")))

    import uvicorn

    from relay.__main__ import RelayServer, build_authenticator
    from relay.app import create_app
    from relay.runtime import tune_garbage_collector
    from relay.settings import RelaySettings

    # Without --jwks every client is the one anonymous admin, all from 127.0.0.1: the
    # per-principal and per-address stream caps (20 and 500 by default) and the connect
    # rate per address would hold the fan-out scenarios to 20 clients, so they are lifted.
    identity: dict[str, Any] = (
        {"oidc_issuer": args.oidc_issuer, "oidc_audience": args.oidc_audience}
        if args.jwks
        else {
            "relay_anonymous_role": "admin",
            "relay_streams_per_principal": 100_000,
            "relay_streams_per_address": 100_000,
            "relay_connects_per_address_per_minute": 1_000_000,
        }
    )
    settings = RelaySettings(
        topic_arn="arn:aws:sns:us-east-1:123456789012:relaybench",
        relay_host=LOOPBACK,
        relay_port=args.port,
        relay_metrics_port=0,
        **identity,
    )
    bus = ControlBus(args.control_port)
    authenticator = (
        token_authenticator(settings, Path(args.jwks))
        if args.jwks
        else build_authenticator(settings)
    )
    app = create_app(settings, bus, None, authenticator)
    bus.relay = app.state.relay
    bus.freeze_gc = args.gc == "freeze"
    # uvicorn's "auto" picks uvloop and httptools when importable, else asyncio and h11.
    bus.http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    # As `relay.__main__.main` configures it.
    config = uvicorn.Config(
        app,
        host=settings.relay_host,
        port=settings.relay_port,
        timeout_graceful_shutdown=int(settings.relay_shutdown_max_ms / 1000) + 5,
        log_level=settings.relay_log_level,
        access_log=False,
    )
    if not args.gc:  # production's setting, as `relay.__main__.main` applies it
        tune_garbage_collector()
    RelayServer(config, app.state.relay).run()


def token_authenticator(settings: Any, jwks: Path) -> Any:
    """Bearer tokens only, checked as `relay.__main__.build_authenticator` checks them."""
    from cmlfleet.identity import StaticSigningKeys, TokenVerifier
    from relay.auth import StreamAuthenticator

    verifier = TokenVerifier(
        issuer=settings.oidc_issuer,
        audience=settings.oidc_audience,
        keys=StaticSigningKeys(json.loads(jwks.read_text())),
        roles_claim=settings.roles_claim,
    )
    return StreamAuthenticator(verifier=verifier, tickets=None)


if __name__ == "__main__":
    main()
