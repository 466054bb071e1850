"""The composition root of the Lambda functions: real adapters, built once per process."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

from cmlfleet.adapters import aws
from cmlfleet.adapters.publisher import SnsEventPublisher
from cmlfleet.adapters.repository import DynamoDbWorkerRepository
from cmlfleet.settings import load_settings


@lru_cache(maxsize=1)
def worker_repository() -> DynamoDbWorkerRepository:
    settings = load_settings()
    return DynamoDbWorkerRepository(
        settings.table_name, aws.client("dynamodb"), timedelta(days=settings.event_ttl_days)
    )


@lru_cache(maxsize=1)
def event_publisher() -> SnsEventPublisher:
    return SnsEventPublisher(load_settings().topic_arn, aws.client("sns"))


def reset() -> None:
    """Forget every built adapter (tests switch environments between cases)."""
    load_settings.cache_clear()
    worker_repository.cache_clear()
    event_publisher.cache_clear()
    aws.reset_clients()
