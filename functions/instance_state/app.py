"""InstanceStateFunction: EC2 state-change notifications (EventBridge) → worker status."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from cmlfleet import bootstrap
from cmlfleet.adapters import aws
from cmlfleet.domain.worker import Worker
from cmlfleet.services.instance_state import (
    Ec2StateChangeNotification,
    InvalidNotificationError,
    locate_worker,
    parse_notification,
    record_state_change,
)
from cmlfleet.settings import load_settings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
idempotency_config = IdempotencyConfig(event_key_jmespath="id", expires_after_seconds=86_400)


@lru_cache(maxsize=1)
def _record_once() -> Any:
    """`record_state_change` made idempotent on the EventBridge event id (built lazily)."""
    store = DynamoDBPersistenceLayer(
        table_name=load_settings().idempotency_table_name, boto3_client=aws.client("dynamodb")
    )

    @idempotent_function(  # type: ignore[untyped-decorator]  # Powertools ships it untyped
        data_keyword_argument="notification", persistence_store=store, config=idempotency_config
    )
    def record(*, notification: Ec2StateChangeNotification, worker: Worker) -> dict[str, Any]:
        outcome = record_state_change(
            notification,
            worker,
            bootstrap.worker_repository(),
            source=load_settings().event_source,
        )
        return outcome.as_dict()

    return record


@metrics.log_metrics
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        notification = parse_notification(event)
    except InvalidNotificationError as error:
        # Retrying a malformed event cannot succeed: log it, count it, and let it go.
        logger.error("malformed EC2 state-change event rejected", reason=str(error))
        metrics.add_metric(name="EventsRejected", unit=MetricUnit.Count, value=1)
        return {"status": "rejected", "reason": str(error)}
    detail = notification.detail
    worker = locate_worker(
        detail.instance_id,
        bootstrap.worker_repository(),
        bootstrap.ec2_fleet(),
        stack=load_settings().stack_name,
    )
    if worker is None:  # not one of this stack's workers
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"status": "ignored", "instance_id": detail.instance_id, "state": detail.state}
    idempotency_config.register_lambda_context(context)
    outcome: dict[str, Any] = _record_once()(notification=notification, worker=worker)
    logger.info("state change handled", event_id=notification.id, **outcome)
    metrics.add_metric(name=f"StateChange_{outcome['status']}", unit=MetricUnit.Count, value=1)
    return outcome
