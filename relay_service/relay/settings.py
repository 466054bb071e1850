"""The relay's settings: one validated class, read from the environment at start."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cmlfleet.identity import DEFAULT_OWNER_CLAIM, require_https
from cmlfleet.settings import ConfigurationError, describe_validation_error


class RelaySettings(BaseSettings):
    """Environment names are the field names upper-cased (as in `template.yaml`)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:", description="domain events topic")
    relay_queue_prefix: str = Field(default="cmlfleet-relay", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    relay_dlq_arn: str | None = Field(default=None, description="redrive target for poison")
    relay_max_receive_count: int = Field(default=5, ge=1, le=1000)
    # Exactly 16 characters: the task role may touch only `<prefix>-` + 16 characters, so
    # one stack's prefix can never match another stack's longer one (template.yaml).
    relay_task_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:16],
        pattern=r"^[a-z0-9-]{16}$",
        description="16 characters of [a-z0-9-]: names this task's queue",
    )
    relay_bus_open_seconds: float = Field(
        default=120.0, ge=0, le=600, description="how long setting up the queue is retried"
    )
    heartbeat_seconds: float = Field(default=30.0, gt=0, le=300)
    relay_retry_ms: int = Field(default=3000, ge=0, le=600_000)
    relay_poll_wait_seconds: int = Field(default=20, ge=0, le=20)
    relay_client_buffer: int = Field(default=1000, ge=1, le=1_000_000)
    relay_client_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=4096, le=1 << 30)
    relay_shutdown_min_ms: int = Field(default=500, ge=0)
    relay_shutdown_max_ms: int = Field(default=5000, ge=0)
    relay_send_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    table_name: str | None = Field(default=None, description="the event log, for replay")
    oidc_issuer: str | None = Field(default=None, pattern=r"^https?://")
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    roles_claim: str = "cognito:groups"
    owner_claim: str = Field(default=DEFAULT_OWNER_CLAIM, min_length=1)
    relay_anonymous_role: Literal["admin", "manager", "user"] | None = Field(
        default=None, description="development only: let clients in without credentials"
    )
    relay_metrics_window_ms: int = Field(default=250, ge=0, le=10_000)
    relay_ring_size: int = Field(default=10_000, ge=10, le=1_000_000)
    # What one client may cost (relay/limits.py); the defaults are far above what the
    # dashboard does (one stream per tab, one replay per reconnect).
    relay_replay_max: int = Field(default=5000, ge=1, le=100_000)
    relay_replay_max_age_hours: int = Field(default=24, ge=1, le=24 * 14)
    relay_replays_per_minute: int = Field(default=30, ge=1, le=10_000)
    relay_streams_per_principal: int = Field(default=20, ge=1, le=100_000)
    relay_streams_per_address: int = Field(default=500, ge=1, le=1_000_000)
    relay_connects_per_address_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    # Taken at once before the rate applies: a NAT'd office's dashboards coming back after
    # a deploy get in over a few seconds (the rest retry with backoff), a loop gets 60.
    relay_connect_burst_per_address: int = Field(default=60, ge=1, le=1_000_000)
    relay_refusal_delay_seconds: float = Field(default=1.0, ge=0, le=30)
    relay_forwarded_hops: int = Field(
        default=0, ge=0, le=5, description="trusted proxies that append to X-Forwarded-For"
    )
    relay_auth_threads: int = Field(default=4, ge=1, le=64)
    relay_replay_threads: int = Field(default=2, ge=1, le=64)
    dashboard_dir: Path | None = Field(
        default_factory=lambda: _bundled_dashboard(), description="the dashboard's static files"
    )
    dashboard_sign_in: Literal["oidc", "development", "none"] = Field(
        default="oidc", description="how the dashboard signs users in"
    )
    dashboard_dev_users: str = Field(
        default="", pattern=r"^([A-Za-z0-9_.@-]{1,64}:(admin|manager|user),?)*$"
    )
    oidc_client_id: str | None = Field(default=None, description="the dashboard's client id")
    oidc_authorize_url: str | None = Field(default=None, pattern=r"^https?://")
    oidc_token_url: str | None = Field(default=None, pattern=r"^https?://")
    oidc_logout_url: str | None = Field(default=None, pattern=r"^https?://")
    oidc_scopes: str = Field(
        default="openid email profile", pattern=r"^[\x21\x23-\x5b\x5d-\x7e ]+$"
    )
    relay_keep_alive_seconds: int = Field(default=95, ge=1, le=4000)
    relay_host: str = "0.0.0.0"
    relay_port: int = Field(default=8080, ge=0, le=65535)
    relay_metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Prometheus metrics, never load balanced"
    )
    ecs_container_metadata_uri_v4: str | None = Field(
        default=None, pattern=r"^https?://", description="set by ECS: watched for draining"
    )
    relay_drain_poll_seconds: float = Field(default=2.0, gt=0, le=60)
    relay_log_level: str = Field(default="info", pattern=r"^(critical|error|warning|info|debug)$")

    @field_validator(
        "oidc_issuer",
        "oidc_audience",
        "oidc_jwks_url",
        "table_name",
        "oidc_client_id",
        "oidc_authorize_url",
        "oidc_token_url",
        "oidc_logout_url",
        "dashboard_dir",
        "ecs_container_metadata_uri_v4",
        "relay_anonymous_role",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _shutdown_range_is_a_range(self) -> RelaySettings:
        if self.relay_shutdown_min_ms > self.relay_shutdown_max_ms:
            raise ValueError("RELAY_SHUTDOWN_MIN_MS must not exceed RELAY_SHUTDOWN_MAX_MS")
        return self

    @model_validator(mode="after")
    def _metrics_have_their_own_port(self) -> RelaySettings:
        if self.relay_metrics_port and self.relay_metrics_port == self.relay_port:
            raise ValueError("RELAY_METRICS_PORT must differ from RELAY_PORT")
        return self

    @model_validator(mode="after")
    def _anonymous_only_in_development(self) -> RelaySettings:
        # Letting clients in without credentials is for a laptop; a relay that knows a real
        # issuer, or runs on ECS, is one people rely on, and must never do it.
        if self.relay_anonymous_role and (self.oidc_issuer or self.ecs_container_metadata_uri_v4):
            raise ValueError(
                "RELAY_ANONYMOUS_ROLE is for development only: not allowed with OIDC_ISSUER "
                "or on ECS (ECS_CONTAINER_METADATA_URI_V4)"
            )
        return self

    @model_validator(mode="after")
    def _keys_travel_encrypted(self) -> RelaySettings:
        for name in ("oidc_issuer", "oidc_jwks_url"):
            url = getattr(self, name)
            if url:
                require_https(url, name.upper())
        return self

    @model_validator(mode="after")
    def _someone_can_get_in(self) -> RelaySettings:
        if bool(self.oidc_issuer) != bool(self.oidc_audience):
            raise ValueError("OIDC_ISSUER and OIDC_AUDIENCE go together")
        if not (self.oidc_issuer or self.table_name or self.relay_anonymous_role):
            raise ValueError(
                "no way to authenticate clients: set OIDC_ISSUER/OIDC_AUDIENCE (bearer tokens) "
                "or TABLE_NAME (tickets)"
            )
        return self

    @model_validator(mode="after")
    def _dashboard_can_sign_in(self) -> RelaySettings:
        if (
            self.dashboard_dir is not None
            and self.dashboard_sign_in == "oidc"
            and self.oidc_authorize_url
            and not self.oidc_token_url
        ):
            raise ValueError("OIDC_AUTHORIZE_URL needs OIDC_TOKEN_URL (code flow with PKCE)")
        return self

    @property
    def jwks_url(self) -> str | None:
        if self.oidc_jwks_url:
            return self.oidc_jwks_url
        return self.oidc_issuer.rstrip("/") + "/.well-known/jwks.json" if self.oidc_issuer else None


def _bundled_dashboard() -> Path | None:
    """`relay_service/dashboard` in a checkout, `/app/dashboard` in the image."""
    candidate = Path(__file__).resolve().parent.parent / "dashboard"
    return candidate if (candidate / "index.html").is_file() else None


def load_relay_settings() -> RelaySettings:
    """The settings, or a `ConfigurationError` naming every bad variable."""
    try:
        return RelaySettings()  # values come from the environment
    except ValidationError as error:
        raise ConfigurationError(
            f"invalid relay configuration: {describe_validation_error(error)}"
        ) from None
