"""The API application: routers, error handlers, OpenAPI docs at /api/docs."""

from __future__ import annotations

from fastapi import FastAPI

from fleet_api.errors import install_error_handlers
from fleet_api.routers import events, health, workers


def create_app() -> FastAPI:
    app = FastAPI(
        title="CML Fleet API",
        version="0.1.0",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        description="Workers of a Cisco Modeling Labs fleet on EC2: list, create, import, "
        "start, stop, terminate. Bearer tokens from the configured OIDC issuer.",
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(events.router)
    return app
