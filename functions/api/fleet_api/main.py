"""The API application: routers, error handlers, HSTS; OpenAPI docs at /api/docs only
where API_DOCS asks for them (the local stack)."""

from __future__ import annotations

from fastapi import FastAPI

from fleet_api.docs import install_docs
from fleet_api.errors import install_error_handlers
from fleet_api.hsts import StrictTransportSecurity
from fleet_api.routers import cml_certificates, events, health, workers
from fleet_api.settings import load_docs_setting

OPENAPI_URL = "/api/openapi.json"


def create_app(*, docs: bool | None = None) -> FastAPI:
    """The app; `docs` serves the schema and Swagger UI (None: as API_DOCS says)."""
    if docs is None:
        docs = load_docs_setting()
    app = FastAPI(
        title="CML Fleet API",
        version="0.1.0",
        docs_url=None,  # our own page (fleet_api.docs), when `docs`
        redoc_url=None,
        openapi_url=OPENAPI_URL if docs else None,
        description="Workers of a Cisco Modeling Labs fleet on EC2: list, create, import, "
        "start, stop, terminate. Bearer tokens from the configured OIDC issuer.",
    )
    install_error_handlers(app)
    app.add_middleware(StrictTransportSecurity)
    if docs:
        install_docs(app, path="/api/docs", openapi_url=OPENAPI_URL)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(cml_certificates.router)
    app.include_router(events.router)
    return app
