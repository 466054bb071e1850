"""CloudWatch datapoints for simulated workers, as EC2 and the CloudWatch agent would send.

Before each metrics collection the local stack puts one datapoint per running instance
for `AWS/EC2 CPUUtilization` and the agent's `CWAgent mem_used_percent` and
`disk_used_percent`, taken from that worker's simulated CML host, so the dashboard's bars
and the CML node counts tell one story.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from devstack.cmlsim import CmlSimulator

log = logging.getLogger("devstack.cloudwatch")


class CloudWatchFeeder:
    def __init__(self, ec2: Any, cloudwatch: Any, cml: CmlSimulator) -> None:
        self._ec2, self._cloudwatch, self._cml = ec2, cloudwatch, cml

    def publish(self) -> int:
        """One datapoint of each metric for every running instance; returns how many."""
        # A second in the past: moto reads up to the collector's `now` truncated to the
        # second, so a datapoint of this very second would be missed by a collection
        # right after (real CloudWatch has an ingestion delay of its own).
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        running = [
            instance["InstanceId"]
            for page in self._ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
            )
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        ]
        for instance_id in running:
            try:
                host = self._cml.worker(instance_id)
            except KeyError:
                continue
            dimensions = [{"Name": "InstanceId", "Value": instance_id}]
            self._cloudwatch.put_metric_data(
                Namespace="AWS/EC2",
                MetricData=[
                    {
                        "MetricName": "CPUUtilization",
                        "Dimensions": dimensions,
                        "Timestamp": now,
                        "Value": round(host.cpu_percent(), 2),
                        "Unit": "Percent",
                    }
                ],
            )
            self._cloudwatch.put_metric_data(
                Namespace="CWAgent",
                MetricData=[
                    {
                        "MetricName": "mem_used_percent",
                        "Dimensions": dimensions,
                        "Timestamp": now,
                        "Value": round(100 * host.memory_used() / host.memory_total, 2),
                        "Unit": "Percent",
                    },
                    {
                        "MetricName": "disk_used_percent",
                        "Dimensions": dimensions,
                        "Timestamp": now,
                        "Value": round(100 * host.disk_used() / host.disk_total, 2),
                        "Unit": "Percent",
                    },
                ],
            )
        return len(running)
