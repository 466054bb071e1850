"""CML integration: an async client for the CML REST API, made to poll a fleet of workers."""

from cmlfleet.cml.client import CmlClient, CmlSharedState
from cmlfleet.cml.errors import CircuitOpenError, CmlError
from cmlfleet.cml.models import CmlCredentials, SystemStats

__all__ = [
    "CircuitOpenError",
    "CmlClient",
    "CmlCredentials",
    "CmlError",
    "CmlSharedState",
    "SystemStats",
]
