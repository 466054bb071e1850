"""Errors as JSON: `{"error": {"code", "message"}}`, with the right status for each cause."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cmlfleet.adapters.ec2 import CloudError
from cmlfleet.adapters.repository import ConcurrentModificationError
from cmlfleet.domain.certificate import CertificateMismatchError
from cmlfleet.domain.lifecycle import IllegalTransitionError
from cmlfleet.services.commands import (
    AlreadyRegisteredError,
    ForbiddenError,
    InstanceTypeNotAllowedError,
    NotImportableError,
    WorkerNotFoundError,
)
from cmlfleet.services.labs import CmlUnavailableError, ThrottledError
from fleet_api.hsts import HSTS


class UnauthorizedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    def respond(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse(error_body(code, message, **extra), status_code=status)

    @app.exception_handler(UnauthorizedError)
    async def unauthorized(_: Request, error: UnauthorizedError) -> JSONResponse:
        response = respond(401, "unauthorized", error.reason)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response

    @app.exception_handler(ForbiddenError)
    async def forbidden(_: Request, error: ForbiddenError) -> JSONResponse:
        return respond(403, "forbidden", str(error))

    @app.exception_handler(WorkerNotFoundError)
    async def not_found(_: Request, error: WorkerNotFoundError) -> JSONResponse:
        return respond(404, "worker_not_found", f"no worker {error}")

    @app.exception_handler(IllegalTransitionError)
    async def illegal(_: Request, error: IllegalTransitionError) -> JSONResponse:
        return respond(
            409, "illegal_transition", str(error), worker_status=error.worker.status.value
        )

    @app.exception_handler(ConcurrentModificationError)
    async def conflict(_: Request, error: ConcurrentModificationError) -> JSONResponse:
        return respond(409, "conflict", "the worker changed while this request ran; retry")

    @app.exception_handler(AlreadyRegisteredError)
    async def duplicate(_: Request, error: AlreadyRegisteredError) -> JSONResponse:
        return respond(409, "already_registered", str(error))

    @app.exception_handler(NotImportableError)
    async def not_importable(_: Request, error: NotImportableError) -> JSONResponse:
        return respond(409, "not_importable", str(error))

    @app.exception_handler(InstanceTypeNotAllowedError)
    async def type_not_allowed(_: Request, error: InstanceTypeNotAllowedError) -> JSONResponse:
        # Reported as the body's validation errors are: the field and what is wrong with it.
        details = [{"field": "instance_type", "problem": str(error)}]
        return respond(422, "invalid_request", "the request is not valid", details=details)

    @app.exception_handler(CertificateMismatchError)
    async def certificate_mismatch(_: Request, error: CertificateMismatchError) -> JSONResponse:
        return respond(409, "certificate_mismatch", str(error))

    @app.exception_handler(ThrottledError)
    async def throttled(_: Request, error: ThrottledError) -> JSONResponse:
        response = respond(429, "throttled", str(error))
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
        return response

    @app.exception_handler(CmlUnavailableError)
    async def cml_unavailable(_: Request, error: CmlUnavailableError) -> JSONResponse:
        return respond(502, "cml_unavailable", f"the worker's CML API: {error}")

    @app.exception_handler(CloudError)
    async def cloud(_: Request, error: CloudError) -> JSONResponse:
        if error.not_found:
            return respond(404, "instance_not_found", error.message, aws_code=error.code)
        return respond(502, "aws_error", error.message, aws_code=error.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in item["loc"][1:]) or "body", "problem": item["msg"]}
            for item in error.errors()
        ]
        return respond(422, "invalid_request", "the request is not valid", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return respond(error.status_code, code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        from aws_lambda_powertools import Logger

        Logger(child=True).exception("unhandled error")
        response = respond(500, "internal_error", "something went wrong; it has been logged")
        # Answered outside every middleware (Starlette's ServerErrorMiddleware).
        response.headers["Strict-Transport-Security"] = HSTS
        return response
