"""What the relay reports about itself: counters, gauges, latencies, and tracing spans.

`GET /metrics` on the metrics port (`RELAY_METRICS_PORT`, `relay/metrics.py`) serves them
in the Prometheus text format. Spans go through the OpenTelemetry API: without an SDK
configured they cost nothing; with one (the ADOT sidecar on Fargate, say) broadcast and
replay show up in traces.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from opentelemetry import trace

tracer = trace.get_tracer("cmlfleet.relay")


class LatencyWindow:
    """The last `size` durations (seconds), for percentiles without unbounded memory."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self.total += seconds

    def percentile(self, fraction: float) -> float:
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def prometheus_text(
    counters: dict[str, int], gauges: dict[str, float], latencies: dict[str, LatencyWindow]
) -> str:
    """The Prometheus exposition format, `cmlfleet_relay_` prefixed."""
    lines: list[str] = []
    for name, count in sorted(counters.items()):
        lines += _metric(f"cmlfleet_relay_{name}_total", "counter", [("", count)])
    for name, level in sorted(gauges.items()):
        lines += _metric(f"cmlfleet_relay_{name}", "gauge", [("", level)])
    for name, window in sorted(latencies.items()):
        metric = f"cmlfleet_relay_{name}_seconds"
        lines += _metric(
            metric,
            "summary",
            [
                ('{quantile="0.5"}', window.percentile(0.5)),
                ('{quantile="0.99"}', window.percentile(0.99)),
            ],
        )
        lines += [f"{metric}_count {window.count}", f"{metric}_sum {window.total:.6f}"]
    return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    return [f"# TYPE {name} {kind}", *(f"{name}{labels} {value:g}" for labels, value in samples)]
