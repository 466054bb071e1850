"""ApiFunction: the REST API (FastAPI) in Lambda behind the ALB, through Mangum."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from mangum import Mangum

from fleet_api.main import create_app

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = create_app()
_adapter = Mangum(app, lifespan="off")


@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _adapter(event, context)  # type: ignore[arg-type]
