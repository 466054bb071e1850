"""Settings of the Lambda functions: one validated class, read from the environment.

The environment variable names are the field names upper-cased, identical to the
`Environment` blocks in `template.yaml` (a template test checks both agree).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A per-worker secret name: a fixed folder, ending in /, before {worker_id}. The functions'
# IAM resource is the name with {worker_id} as *: with nothing fixed before it, that is
# every secret of the account (template.yaml's CmlCredentialsSecretName says the same).
PER_WORKER_SECRET = re.compile(r"[A-Za-z0-9/_+=.@-]+/\{worker_id\}[A-Za-z0-9/_+=.@-]*")


class ConfigurationError(RuntimeError):
    """The environment is missing or has invalid settings; the message names them."""


class FleetSettings(BaseSettings):
    """What every CML Fleet function needs to know about its environment."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    table_name: str = Field(min_length=3, description="DynamoDB table: workers and event log")
    idempotency_table_name: str = Field(min_length=3, description="Powertools idempotency")
    topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:", description="domain events topic")
    event_ttl_days: int = Field(default=7, ge=1, le=365, description="event log retention")
    event_source: str = Field(default="urn:cmlfleet", min_length=1)
    # The CloudFormation stack: its workers are tagged with it, and only those are its own.
    stack_name: str = Field(default="cmlfleet", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    # The workers' CML API (collectors and the manual labs refresh).
    cml_credentials_secret: str | None = Field(
        default=None,
        description="Secrets Manager secret (name or ARN) with username/password; "
        "with {worker_id} in it, each worker's own secret",
    )
    cml_endpoint_template: str = Field(
        default="https://{private_ip}", description="a worker's CML base URL, filled per worker"
    )
    # TLS: each worker's certificate pinned at first contact, unless a CA bundle is given
    # (verified against it) or verification is turned off (`cml/trust.py`).
    cml_verify_tls: bool = True
    cml_ca_bundle: str = Field(default="", description="PEM file of the CA of the CML hosts")
    cml_ca_check_hostname: bool = True
    cml_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    cml_concurrency: int = Field(default=25, ge=1, le=500)
    metrics_threshold_points: float = Field(default=5.0, ge=0, le=100)
    metrics_keepalive_seconds: int = Field(default=600, ge=60)
    labs_refresh_min_interval_seconds: int = Field(default=10, ge=0, le=3600)
    # Relay queues (the reaper removes those of dead relay tasks).
    relay_queue_prefix: str = Field(default="cmlfleet-relay", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    relay_queue_stale_seconds: int = Field(default=600, ge=120)

    @field_validator("cml_credentials_secret")
    @classmethod
    def _per_worker_secret_has_a_prefix(cls, value: str | None) -> str | None:
        if value and "{worker_id}" in value and not PER_WORKER_SECRET.fullmatch(value):
            raise ValueError(
                "a per-worker secret name needs a fixed prefix ending in / before {worker_id} "
                "(e.g. cml-fleet/cml/{worker_id}), and {worker_id} once: the functions may "
                "read every secret the name matches with {worker_id} as *"
            )
        return value

    @property
    def cml_trust_mode(self) -> Literal["pin", "ca", "off"]:
        """How the workers' CML certificates are checked (see `cml/trust.py`)."""
        if not self.cml_verify_tls:
            return "off"
        return "ca" if self.cml_ca_bundle else "pin"


def describe_validation_error(error: ValidationError) -> str:
    """Name each bad environment variable and what is wrong with it."""
    problems = []
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]).upper() if item["loc"] else "?"
        problems.append(f"{name}: {item['msg']}")
    return "; ".join(problems)


@lru_cache(maxsize=1)
def load_settings() -> FleetSettings:
    """The settings, validated once per process; a `ConfigurationError` says what is wrong."""
    try:
        return FleetSettings()  # values come from the environment
    except ValidationError as error:
        raise ConfigurationError(
            f"invalid configuration: {describe_validation_error(error)}"
        ) from None
