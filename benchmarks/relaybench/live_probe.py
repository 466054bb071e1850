"""How responsive the relay is while a scenario runs: its liveness endpoint, timed."""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any

from benchmarks.relaybench.common import LOOPBACK


class LiveProbe:
    """`GET /api/events/live` every 0.25 s from a thread: how responsive the relay is."""

    def __init__(self, port: int) -> None:
        self._port, self._stop = port, threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-probe", daemon=True)
        self.millis: list[float] = []
        self.failures = 0

    def __enter__(self) -> LiveProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            started = time.perf_counter()
            connection = http.client.HTTPConnection(LOOPBACK, self._port, timeout=10)
            try:
                connection.request("GET", "/api/events/live")
                connection.getresponse().read()
                self.millis.append((time.perf_counter() - started) * 1000)
            except (OSError, http.client.HTTPException):
                self.failures += 1
            finally:
                connection.close()

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.millis)
        return {
            "probes": len(ordered),
            "failures": self.failures,
            "p50_ms": round(ordered[len(ordered) // 2], 1) if ordered else None,
            "max_ms": round(ordered[-1], 1) if ordered else None,
        }
