"""The API function's settings: the shared ones plus identity and how workers launch."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, ValidationError, field_validator

from cmlfleet.adapters.ec2 import INSTANCE_TYPE_PATTERN
from cmlfleet.settings import ConfigurationError, FleetSettings, describe_validation_error


class ApiSettings(FleetSettings):
    """Environment names are the field names upper-cased, as in `template.yaml`."""

    cml_ami_id: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$", description="AMI new workers boot")
    worker_instance_type: str = Field(default="m5zn.metal", pattern=INSTANCE_TYPE_PATTERN)
    worker_subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]+$")
    worker_security_group_ids: str = Field(
        default="", pattern=r"^(sg-[0-9a-f]+(,sg-[0-9a-f]+)*)?$", description="comma-separated"
    )
    worker_key_name: str | None = None
    worker_instance_profile_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/.+$"
    )
    worker_detailed_monitoring: bool = False
    oidc_issuer: str = Field(pattern=r"^https?://", description="the token issuer (iss)")
    oidc_audience: str = Field(min_length=1, description="the client id tokens are for (aud)")
    oidc_jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    roles_claim: str = "cognito:groups"
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

    @property
    def jwks_url(self) -> str:
        return self.oidc_jwks_url or self.oidc_issuer.rstrip("/") + "/.well-known/jwks.json"

    @property
    def security_groups(self) -> tuple[str, ...]:
        return tuple(g for g in self.worker_security_group_ids.split(",") if g)


@lru_cache(maxsize=1)
def load_api_settings() -> ApiSettings:
    try:
        return ApiSettings()  # values come from the environment
    except ValidationError as error:
        raise ConfigurationError(
            f"invalid API configuration: {describe_validation_error(error)}"
        ) from None
