"""Reading the workers' latest CPU, memory and disk from CloudWatch, many workers per call.

CPU comes from EC2's own `AWS/EC2 CPUUtilization`; memory and disk from the CloudWatch
agent (namespace `CWAgent`, `mem_used_percent` and `disk_used_percent`), which must be
configured to aggregate by `InstanceId` alone (see README). One `GetMetricData` call takes
up to 500 queries, three per worker, so 1,000 workers cost 6 calls, not 3,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

MAX_QUERIES_PER_CALL = 500
METRICS = (
    ("cpu", "AWS/EC2", "CPUUtilization"),
    ("mem", "CWAgent", "mem_used_percent"),
    ("disk", "CWAgent", "disk_used_percent"),
)


@dataclass(frozen=True)
class InstanceLoad:
    cpu: float | None = None
    memory: float | None = None
    disk: float | None = None


@dataclass
class CloudWatchLoadReader:
    client: Any
    window: timedelta = timedelta(minutes=10)
    period_seconds: int = 60
    calls: int = field(default=0, init=False)

    def latest(self, instance_ids: Sequence[str], now: datetime) -> dict[str, InstanceLoad]:
        """The newest datapoint of each metric per instance in the window (absent: None)."""
        queries = [
            self._query(index, kind, namespace, name, instance_id)
            for index, instance_id in enumerate(instance_ids)
            for kind, namespace, name in METRICS
        ]
        found: dict[str, dict[str, float]] = {}
        for start in range(0, len(queries), MAX_QUERIES_PER_CALL):
            for result in self._fetch(queries[start : start + MAX_QUERIES_PER_CALL], now):
                if not result.get("Values"):
                    continue
                kind, index = result["Id"].split("_")
                # ScanBy TimestampDescending: the first value seen is the newest (later
                # pages of the same query hold older ones).
                values = found.setdefault(instance_ids[int(index)], {})
                values.setdefault(kind, float(result["Values"][0]))
        return {
            instance_id: InstanceLoad(values.get("cpu"), values.get("mem"), values.get("disk"))
            for instance_id, values in found.items()
        }

    def _fetch(self, queries: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        request = {
            "MetricDataQueries": queries,
            "StartTime": now - self.window,
            "EndTime": now,
            "ScanBy": "TimestampDescending",
        }
        while True:
            self.calls += 1
            response = self.client.get_metric_data(**request)
            results.extend(response.get("MetricDataResults", []))
            token = response.get("NextToken")
            if not token:
                return results
            request["NextToken"] = token

    def _query(
        self, index: int, kind: str, namespace: str, name: str, instance_id: str
    ) -> dict[str, Any]:
        return {
            "Id": f"{kind}_{index}",
            "MetricStat": {
                "Metric": {
                    "Namespace": namespace,
                    "MetricName": name,
                    "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                },
                "Period": self.period_seconds,
                "Stat": "Average",
            },
            "ReturnData": True,
        }
