"""One metrics collection over a fleet of simulated running workers.

DynamoDB and CloudWatch are moto in this process (`mock_aws`); every worker's CML API is a
virtual host of the CML simulator, served over real HTTP by a separate process. Reports
wall time and the AWS and CML calls per worker, for a first run (every worker's numbers
are new: saved and announced) and a second one a minute later (unchanged: suppressed).
Usage: python -m benchmarks.jobs [--workers 1000] [--concurrency 25]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from moto import mock_aws

from cmlfleet.adapters.cloudwatch import CloudWatchLoadReader
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.cml.client import CmlClient
from cmlfleet.cml.models import CmlCredentials
from cmlfleet.domain.worker import Worker, register_worker
from cmlfleet.services.collection import collect_metrics
from devstack.template import load_sam_template

os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_ACCOUNT_ID_ENDPOINT_MODE="disabled",
    POWERTOOLS_LOG_LEVEL="ERROR",
)


def serve_cml(keys: list[str], ready: Any, stop: Any) -> None:
    from devstack.cmlsim import CmlSimulator

    simulator = CmlSimulator(username="admin", password="bench")
    for key in keys:
        simulator.add_worker(key)
    simulator.start()
    ready.put(simulator.url)
    stop.wait()
    simulator.stop()


def count_calls(client: Any, counter: Counter[str]) -> Any:
    def count(event_name: str, **_: Any) -> None:
        counter[event_name.split(".")[-1]] += 1

    client.meta.events.register("before-call.*.*", count)
    return client


class TimedRepository(DynamoDbWorkerRepository):
    """Keeps the time spent saving apart: moto's transactions are slow, AWS's are not."""

    save_seconds = 0.0

    def save(self, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            super().save(*args, **kwargs)
        finally:
            TimedRepository.save_seconds += time.perf_counter() - started


def make_table(dynamodb: Any) -> str:
    properties = load_sam_template()["Resources"]["WorkersTable"]["Properties"]
    dynamodb.create_table(
        TableName="workers",
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        GlobalSecondaryIndexes=properties["GlobalSecondaryIndexes"],
        BillingMode="PAY_PER_REQUEST",
    )
    return "workers"


def seed(repository: DynamoDbWorkerRepository, cloudwatch: Any, count: int) -> list[Worker]:
    workers = []
    now = datetime.now(UTC)
    for index in range(count):
        worker = register_worker(
            name=f"bench-{index}",
            owner="bench",
            now=now - timedelta(hours=1),
            instance_id=f"i-{index:017x}",
            ec2_state="running",
        ).worker
        repository.save(worker, [], expected_version=0)
        workers.append(worker)
    for start in range(0, count, 20):
        cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": w.instance_id}],
                    "Timestamp": now - timedelta(minutes=1),
                    "Value": 10.0 + index % 50,
                }
                for index, w in enumerate(workers[start : start + 20])
            ],
        )
    return workers


async def one_run(
    repository: DynamoDbWorkerRepository,
    reader: CloudWatchLoadReader,
    cml_url: str,
    now: datetime,
    concurrency: int,
    shared: Any,
) -> tuple[Any, float, Counter[str]]:
    async with CmlClient(
        lambda: CmlCredentials("admin", "bench"), timeout=10, max_connections=concurrency
    ) as cml:
        cml.share_state_with(shared)
        started = time.perf_counter()
        result = await collect_metrics(
            repository,
            reader,
            cml,
            endpoint_for=lambda w: f"{cml_url}/workers/{w.instance_id}",
            now=now,
            source="urn:bench",
            concurrency=concurrency,
            cml_deadline=30,
        )
        return result, time.perf_counter() - started, Counter(cml.calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=25)
    args = parser.parse_args()
    keys = [f"i-{index:017x}" for index in range(args.workers)]
    ready: Any = multiprocessing.Queue()
    stop: Any = multiprocessing.Event()
    server = multiprocessing.Process(target=serve_cml, args=(keys, ready, stop), daemon=True)
    server.start()
    cml_url = ready.get(timeout=120)
    try:
        with mock_aws():
            from cmlfleet.cml.client import CmlSharedState

            aws_calls: Counter[str] = Counter()
            dynamodb = count_calls(boto3.client("dynamodb"), aws_calls)
            cloudwatch = count_calls(boto3.client("cloudwatch"), aws_calls)
            repository = TimedRepository(make_table(dynamodb), dynamodb, timedelta(days=1))
            seed(repository, cloudwatch, args.workers)
            reader = CloudWatchLoadReader(cloudwatch)
            shared = CmlSharedState()
            now = datetime.now(UTC)
            print(f"workers: {args.workers}, CML concurrency: {args.concurrency}")
            for label, moment in (
                ("first run", now),
                ("a minute later", now + timedelta(minutes=1)),
            ):
                aws_calls.clear()
                TimedRepository.save_seconds = 0.0
                result, wall, cml_calls = asyncio.run(
                    one_run(repository, reader, cml_url, moment, args.concurrency, shared)
                )
                per = args.workers
                dynamo = {k: v for k, v in aws_calls.items() if k != "GetMetricData"}
                saving = TimedRepository.save_seconds
                print(
                    f"{label}: wall {wall:.2f} s (saving in moto {saving:.2f} s,"
                    f" the rest {wall - saving:.2f} s); saved {result.saved},"
                    " unchanged "
                    f"{result.unchanged}, failed {len(result.failed)}; "
                    f"GetMetricData {aws_calls['GetMetricData']} calls "
                    f"({aws_calls['GetMetricData'] / per:.4f}/worker); DynamoDB "
                    f"{sum(dynamo.values()) / per:.2f}/worker ({dynamo}); "
                    f"CML {sum(cml_calls.values()) / per:.2f}/worker ({dict(cml_calls)})"
                )
    finally:
        stop.set()
        server.join(20)


if __name__ == "__main__":
    main()
