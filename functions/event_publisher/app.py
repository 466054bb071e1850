"""EventPublisherFunction: outbox items from the table's stream → the SNS topic."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from cmlfleet import bootstrap
from cmlfleet.services.outbox import publish_outbox_record

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@tracer.capture_method
def publish_record(record: DynamoDBRecord) -> str | None:
    stream = record.dynamodb
    new_image = stream.new_image if stream else None
    event_name = record.event_name.name if record.event_name else None
    event_id = publish_outbox_record(event_name, new_image, bootstrap.event_publisher())
    if event_id:
        metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=1)
    return event_id


@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=publish_record, processor=processor, context=context
    )
