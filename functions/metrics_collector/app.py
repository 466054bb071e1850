"""MetricsCollectorFunction: every running worker's load, saved and announced when it moved."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cmlfleet import bootstrap
from cmlfleet.adapters import aws
from cmlfleet.adapters.cloudwatch import CloudWatchLoadReader
from cmlfleet.domain.load import MetricsPolicy
from cmlfleet.services.collection import RunResult, collect_metrics
from cmlfleet.settings import load_settings
from cmlfleet.timeutil import utc_now

logger = Logger()
tracer = Tracer()
metrics = Metrics()


async def run() -> RunResult:
    settings = load_settings()
    async with bootstrap.cml_client() as cml:
        return await collect_metrics(
            bootstrap.worker_repository(),
            CloudWatchLoadReader(aws.client("cloudwatch")),
            cml,
            endpoint_for=bootstrap.cml_endpoint,
            now=utc_now(),
            source=settings.event_source,
            policy=MetricsPolicy(
                settings.metrics_threshold_points,
                timedelta(seconds=settings.metrics_keepalive_seconds),
            ),
            concurrency=settings.cml_concurrency,
            # Long enough for the client's own retries, so its circuit breaker sees a hang.
            cml_deadline=settings.cml_timeout_seconds * 3 + 1,
        )


@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = asyncio.run(run())
    metrics.add_metric(name="WorkersMeasured", unit=MetricUnit.Count, value=result.workers)
    metrics.add_metric(name="MetricsSaved", unit=MetricUnit.Count, value=result.saved)
    metrics.add_metric(name="WorkersFailed", unit=MetricUnit.Count, value=len(result.failed))
    logger.info("metrics collected", **result.as_dict())
    return result.as_dict()
