"""The API function's settings: the shared ones plus identity and how workers launch."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cmlfleet.adapters.ec2 import INSTANCE_TYPE_PATTERN
from cmlfleet.identity import DEFAULT_OWNER_CLAIM, require_https
from cmlfleet.settings import ConfigurationError, FleetSettings, describe_validation_error

# Comma-separated instance types (no spaces, none empty), or nothing.
INSTANCE_TYPES_PATTERN = r"^([a-z0-9-]+\.[a-z0-9-]+(,[a-z0-9-]+\.[a-z0-9-]+)*)?$"


class DocsSettings(BaseSettings):
    """Whether the app serves its OpenAPI schema and Swagger UI. Read when the app is built
    (at import in Lambda), apart from the rest, which is read on first use: the health check
    answers even when the rest of the configuration is wrong."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Swagger UI's script comes from a CDN and would run on the dashboard's origin, next
    # to its tokens: off unless asked for (the local stack turns it on).
    api_docs: bool = False


class ApiSettings(FleetSettings, DocsSettings):
    """Environment names are the field names upper-cased, as in `template.yaml`."""

    cml_ami_id: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI new workers boot")
    worker_instance_type: str = Field(default="m5zn.metal", pattern=INSTANCE_TYPE_PATTERN)
    # What an admin may launch besides WORKER_INSTANCE_TYPE; IAM allows the same list.
    allowed_instance_types: str = Field(
        default="", pattern=INSTANCE_TYPES_PATTERN, description="comma-separated"
    )
    worker_subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]+$")
    worker_security_group_ids: str = Field(
        default="", pattern=r"^(sg-[0-9a-f]+(,sg-[0-9a-f]+)*)?$", description="comma-separated"
    )
    worker_key_name: str | None = None
    worker_instance_profile_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/.+$"
    )
    worker_detailed_monitoring: bool = False
    # https, or http on this machine (the local stack): checked by `_https_only`.
    oidc_issuer: str = Field(description="the token issuer (iss)")
    oidc_audience: str = Field(min_length=1, description="the client id tokens are for (aud)")
    oidc_jwks_url: str | None = None
    roles_claim: str = "cognito:groups"
    owner_claim: str = Field(
        default=DEFAULT_OWNER_CLAIM, min_length=1, description="the claim naming the user"
    )
    stream_ticket_ttl_seconds: int = Field(default=60, ge=5, le=3600)
    aws_region: str | None = None

    @field_validator(
        "worker_subnet_id",
        "worker_key_name",
        "worker_instance_profile_arn",
        "oidc_jwks_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # CloudFormation cannot pass "no value" to an environment variable, only "".
        return None if value == "" else value

    @field_validator("oidc_issuer", "oidc_jwks_url")
    @classmethod
    def _https_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The keys that decide who is admin must not travel in plaintext.
        name = (info.field_name or "").upper()
        return None if value is None else require_https(value, name)

    @property
    def jwks_url(self) -> str:
        return self.oidc_jwks_url or self.oidc_issuer.rstrip("/") + "/.well-known/jwks.json"

    @property
    def security_groups(self) -> tuple[str, ...]:
        return tuple(g for g in self.worker_security_group_ids.split(",") if g)

    @property
    def launchable_instance_types(self) -> tuple[str, ...]:
        """Every type `create` may launch: the allowed ones and always the default."""
        listed = {t for t in self.allowed_instance_types.split(",") if t}
        return tuple(sorted(listed | {self.worker_instance_type}))


def load_docs_setting() -> bool:
    """API_DOCS, validated; a `ConfigurationError` names it when it is not a boolean."""
    try:
        return DocsSettings().api_docs
    except ValidationError as error:
        raise ConfigurationError(
            f"invalid API configuration: {describe_validation_error(error)}"
        ) from None


@lru_cache(maxsize=1)
def load_api_settings() -> ApiSettings:
    try:
        return ApiSettings()  # values come from the environment
    except ValidationError as error:
        raise ConfigurationError(
            f"invalid API configuration: {describe_validation_error(error)}"
        ) from None
