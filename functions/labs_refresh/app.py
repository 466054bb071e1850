"""LabsRefreshFunction: every running worker's CML labs; `worker.labs.updated` on change."""

from __future__ import annotations

import asyncio
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cmlfleet import bootstrap
from cmlfleet.services.collection import RunResult, refresh_labs
from cmlfleet.settings import load_settings
from cmlfleet.timeutil import utc_now

logger = Logger()
tracer = Tracer()
metrics = Metrics()


async def run() -> RunResult:
    settings = load_settings()
    async with bootstrap.cml_client() as cml:
        return await refresh_labs(
            bootstrap.worker_repository(),
            cml,
            endpoint_for=bootstrap.cml_endpoint,
            now=utc_now(),
            source=settings.event_source,
            trigger="schedule",
            concurrency=settings.cml_concurrency,
            cml_deadline=settings.cml_timeout_seconds * 4,
        )


@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = asyncio.run(run())
    metrics.add_metric(name="LabsChanged", unit=MetricUnit.Count, value=result.saved)
    metrics.add_metric(name="WorkersFailed", unit=MetricUnit.Count, value=len(result.failed))
    logger.info("labs refreshed", **result.as_dict())
    return result.as_dict()
