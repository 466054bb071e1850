"""/api/health: is the API up (no token needed, nothing private)."""

from __future__ import annotations

from fastapi import APIRouter

import cmlfleet
from fleet_api.schemas import Health

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health")
def health() -> Health:
    return Health(status="ok", version=cmlfleet.__version__)
