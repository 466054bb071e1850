"""ApiFunction as Lambda runs it: ALB and HTTP API events through Mangum into the app."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import cmlfleet
from cmlfleet.settings import ConfigurationError
from devstack.lambdas import LambdaContext
from fleet_api import deps
from fleet_api.settings import load_api_settings
from tests.api.conftest import AMI, Api

ROOT = Path(__file__).resolve().parents[2]
HANDLER_FILE = ROOT / "functions" / "api" / "app.py"
MODULE_NAME = "api_function_app"
TARGET_GROUP = (
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/cmlfleet-api/0123456789abcdef"
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:There is no current event loop:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
]


# ---- events as the load balancer and API Gateway send them -----------------------------------
def alb_event(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: str = "",
    is_base64: bool = False,
) -> dict[str, Any]:
    """An ALB target-group event with multi-value headers off."""
    return {
        "requestContext": {"elb": {"targetGroupArn": TARGET_GROUP}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": query or {},
        "headers": {
            "accept": "application/json",
            "host": "fleet.example.test",
            "user-agent": "pytest",
            "x-amzn-trace-id": "Root=1-5f84c7a9-0123456789abcdef01234567",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **{name.lower(): value for name, value in (headers or {}).items()},
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def http_api_event(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    body: str | None = None,
    is_base64: bool = False,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event."""
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "accept": "application/json",
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            "user-agent": "pytest",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **{name.lower(): value for name, value in (headers or {}).items()},
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "30/Nov/2026:06:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if body is not None:
        event["body"] = body
    return event


def json_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/json"}


def body_of(response: dict[str, Any]) -> Any:
    assert response["isBase64Encoded"] is False
    assert response["headers"]["content-type"] == "application/json"
    json.dumps(response)  # what Lambda hands back must be plain JSON
    return json.loads(response["body"])


# ---- the function, imported as Lambda would --------------------------------------------------
def import_api_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, HANDLER_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def forget_built_container() -> None:
    load_api_settings.cache_clear()
    deps.build_container.cache_clear()


@pytest.fixture
def configured(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The environment the API function reads, as template.yaml sets it (moto is active)."""
    for name, value in api.aws.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CML_AMI_ID", AMI)
    monkeypatch.setenv("OIDC_ISSUER", api.issuer.issuer)
    monkeypatch.setenv("OIDC_AUDIENCE", api.issuer.audience)
    forget_built_container()
    yield api
    forget_built_container()


@pytest.fixture
def function(configured: Api) -> Iterator[ModuleType]:
    """The handler module, its app wired to the test container (moto, development issuer)."""
    module = import_api_module()
    module.app.dependency_overrides[deps.get_container] = lambda: configured.container
    yield module
    module.app.dependency_overrides.clear()
    sys.modules.pop(MODULE_NAME, None)


@pytest.fixture
def unwired_function(configured: Api) -> Iterator[ModuleType]:
    """The handler module with its real composition root (no dependency override)."""
    module = import_api_module()
    yield module
    sys.modules.pop(MODULE_NAME, None)


# ---- ALB -------------------------------------------------------------------------------------
def test_an_alb_health_check_is_answered_with_json(
    function: ModuleType, lambda_context: LambdaContext
) -> None:
    response = function.lambda_handler(alb_event("GET", "/api/health"), lambda_context)

    assert response["statusCode"] == 200
    assert body_of(response) == {"status": "ok", "version": cmlfleet.__version__}
    assert "multiValueHeaders" not in response


def test_an_admin_lists_workers_through_the_alb(
    function: ModuleType, configured: Api, lambda_context: LambdaContext
) -> None:
    worker = configured.create_worker("lab", "alice")

    response = function.lambda_handler(
        alb_event("GET", "/api/workers", headers=configured.admin), lambda_context
    )

    assert response["statusCode"] == 200
    assert body_of(response) == {"workers": [worker]}


def test_alb_query_parameters_reach_the_filters(
    function: ModuleType, configured: Api, lambda_context: LambdaContext
) -> None:
    configured.create_worker("lab-a", "alice")
    bobs = configured.create_worker("lab-b", "bob")

    response = function.lambda_handler(
        alb_event("GET", "/api/workers", headers=configured.admin, query={"owner": "bob"}),
        lambda_context,
    )

    assert [w["worker_id"] for w in body_of(response)["workers"]] == [bobs["worker_id"]]


@pytest.mark.parametrize("is_base64", [False, True], ids=["plain body", "base64 body"])
def test_an_admin_creates_a_worker_through_the_alb(
    function: ModuleType, configured: Api, lambda_context: LambdaContext, is_base64: bool
) -> None:
    body = json.dumps({"name": "lab-alb", "owner": "alice"})
    if is_base64:
        body = base64.b64encode(body.encode()).decode()
    event = alb_event(
        "POST",
        "/api/workers",
        headers=json_headers(configured.admin),
        body=body,
        is_base64=is_base64,
    )

    response = function.lambda_handler(event, lambda_context)

    assert response["statusCode"] == 201, response["body"]
    created = body_of(response)
    assert (created["name"], created["owner"], created["status"]) == (
        "lab-alb",
        "alice",
        "provisioning",
    )
    stored = configured.client.get(f"/api/workers/{created['worker_id']}", headers=configured.admin)
    assert stored.json() == created


def test_an_alb_request_without_a_token_is_refused_with_www_authenticate(
    function: ModuleType, lambda_context: LambdaContext
) -> None:
    response = function.lambda_handler(alb_event("GET", "/api/workers"), lambda_context)

    assert response["statusCode"] == 401
    assert response["headers"]["www-authenticate"] == 'Bearer error="invalid_token"'
    assert body_of(response)["error"]["code"] == "unauthorized"


def test_an_invalid_body_through_the_alb_is_a_json_422(
    function: ModuleType, configured: Api, lambda_context: LambdaContext
) -> None:
    event = alb_event(
        "POST", "/api/workers", headers=json_headers(configured.admin), body='{"name": ""}'
    )

    response = function.lambda_handler(event, lambda_context)

    assert response["statusCode"] == 422
    assert body_of(response)["error"]["code"] == "invalid_request"


# ---- API Gateway HTTP API (v2) ---------------------------------------------------------------
def test_an_http_api_health_check_is_answered_with_json(
    function: ModuleType, lambda_context: LambdaContext
) -> None:
    response = function.lambda_handler(http_api_event("GET", "/api/health"), lambda_context)

    assert response["statusCode"] == 200
    assert body_of(response) == {"status": "ok", "version": cmlfleet.__version__}


def test_an_admin_lists_workers_through_the_http_api(
    function: ModuleType, configured: Api, lambda_context: LambdaContext
) -> None:
    worker = configured.create_worker("lab", "alice")
    configured.set_status(configured.create_worker("other", "bob")["worker_id"], "running")

    response = function.lambda_handler(
        http_api_event(
            "GET", "/api/workers", headers=configured.admin, query="status=provisioning"
        ),
        lambda_context,
    )

    assert response["statusCode"] == 200
    assert body_of(response) == {"workers": [worker]}


@pytest.mark.parametrize("is_base64", [False, True], ids=["plain body", "base64 body"])
def test_an_admin_creates_a_worker_through_the_http_api(
    function: ModuleType, configured: Api, lambda_context: LambdaContext, is_base64: bool
) -> None:
    body = json.dumps({"name": "lab-http"})
    if is_base64:
        body = base64.b64encode(body.encode()).decode()
    event = http_api_event(
        "POST",
        "/api/workers",
        headers=json_headers(configured.admin),
        body=body,
        is_base64=is_base64,
    )

    response = function.lambda_handler(event, lambda_context)

    assert response["statusCode"] == 201, response["body"]
    assert (body_of(response)["name"], body_of(response)["owner"]) == ("lab-http", "ada")


# ---- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ami",
    [
        pytest.param(None, id="CML_AMI_ID missing"),
        pytest.param("not-an-ami", id="CML_AMI_ID invalid"),
    ],
)
def test_a_bad_configuration_is_a_json_500_not_a_crash(
    unwired_function: ModuleType,
    configured: Api,
    lambda_context: LambdaContext,
    monkeypatch: pytest.MonkeyPatch,
    ami: str | None,
) -> None:
    if ami is None:
        monkeypatch.delenv("CML_AMI_ID")
    else:
        monkeypatch.setenv("CML_AMI_ID", ami)

    response = unwired_function.lambda_handler(
        alb_event("GET", "/api/workers", headers=configured.admin), lambda_context
    )

    assert response["statusCode"] == 500
    assert body_of(response) == {
        "error": {
            "code": "internal_error",
            "message": "something went wrong; it has been logged",
        }
    }
    assert "CML_AMI_ID" not in response["body"]  # configuration stays out of responses


def test_the_health_check_does_not_need_the_configuration(
    unwired_function: ModuleType, lambda_context: LambdaContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CML_AMI_ID")

    response = unwired_function.lambda_handler(alb_event("GET", "/api/health"), lambda_context)

    assert response["statusCode"] == 200


def test_a_missing_setting_is_named_by_the_configuration_error(
    configured: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CML_AMI_ID")
    monkeypatch.delenv("OIDC_AUDIENCE")

    with pytest.raises(ConfigurationError) as error:
        load_api_settings()

    assert "CML_AMI_ID" in str(error.value)
    assert "OIDC_AUDIENCE" in str(error.value)
