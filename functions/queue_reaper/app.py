"""QueueReaperFunction: deletes the queues (and subscriptions) of relay tasks that died."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cmlfleet.adapters import aws
from cmlfleet.services.reaper import reap_relay_queues
from cmlfleet.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load_settings()
    result = reap_relay_queues(
        aws.client("sqs"),
        aws.client("sns"),
        topic_arn=settings.topic_arn,
        prefix=settings.relay_queue_prefix,
        stale_after=settings.relay_queue_stale_seconds,
        now=time.time(),
    )
    metrics.add_metric(name="RelayQueuesDeleted", unit=MetricUnit.Count, value=len(result.deleted))
    logger.info("relay queues checked", **result.as_dict())
    return result.as_dict()
