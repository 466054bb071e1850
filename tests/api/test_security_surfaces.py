"""Issue 13, "quiet surfaces", in the API: docs only where asked for (L5), HSTS on every
response (L8), and only the allowed instance types launched (L7). Each test failed before
its fix."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cmlfleet.settings import ConfigurationError
from fleet_api.deps import get_container
from fleet_api.main import create_app
from fleet_api.settings import ApiSettings, load_docs_setting
from tests.api.conftest import Api

HSTS = "max-age=31536000; includeSubDomains"
DOCS_PATHS = ("/api/docs", "/api/redoc", "/api/openapi.json")
PINNED_CDN = re.compile(r"^https://cdn\.jsdelivr\.net/npm/swagger-ui-dist@5\.\d+\.\d+/")
SRI = re.compile(r"^sha384-[A-Za-z0-9+/]{64}$")


@pytest.fixture
def no_docs_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_DOCS", raising=False)


def client(docs: bool | None = None) -> TestClient:
    return TestClient(create_app(docs=docs), raise_server_exceptions=False)


def settings(**values: str) -> ApiSettings:
    return ApiSettings(
        table_name="workers",
        idempotency_table_name="idempotency",
        topic_arn="arn:aws:sns:us-east-1:123456789012:events",
        cml_ami_id="ami-0c0ffee0c0ffee000",
        oidc_issuer="https://issuer.example.com",
        oidc_audience="dashboard",
        **values,
    )


# ---- L5: the docs page ---------------------------------------------------------------------


@pytest.mark.usefixtures("no_docs_variable")
@pytest.mark.parametrize("path", DOCS_PATHS)
def test_l5_the_docs_and_the_schema_are_not_served_unless_asked_for(path: str) -> None:
    response = client().get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("value", "served"), [("false", False), ("true", True)])
def test_l5_api_docs_in_the_environment_turns_the_docs_on(
    monkeypatch: pytest.MonkeyPatch, value: str, served: bool
) -> None:
    monkeypatch.setenv("API_DOCS", value)

    with client() as api:
        statuses = {path: api.get(path).status_code for path in DOCS_PATHS}

    expected = 200 if served else 404
    assert statuses == {"/api/docs": expected, "/api/redoc": 404, "/api/openapi.json": expected}


def test_l5_a_bad_api_docs_value_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_DOCS", "perhaps")

    with pytest.raises(ConfigurationError, match="API_DOCS"):
        load_docs_setting()


def test_l5_the_docs_page_runs_only_the_pinned_swagger_ui_checked_by_its_hash() -> None:
    response = client(docs=True).get("/api/docs")

    assert response.status_code == 200
    page = response.text
    (script_tag,) = re.findall(r"<script [^>]*src=[^>]*>", page)
    (src,) = re.findall(r'src="([^"]+)"', script_tag)
    assert PINNED_CDN.match(src)
    assert src.endswith("/swagger-ui-bundle.js")
    (integrity,) = re.findall(r'integrity="([^"]+)"', script_tag)
    assert SRI.match(integrity)
    assert 'crossorigin="anonymous"' in script_tag
    (stylesheet,) = re.findall(r"<link [^>]*stylesheet[^>]*>", page)
    assert SRI.match(re.findall(r'integrity="([^"]+)"', stylesheet)[0])
    # The policy: scripts only from that exact file and the page's own inline start-up.
    directives = response.headers["content-security-policy"].split("; ")
    policy = {name: value for name, _, value in (d.partition(" ") for d in directives)}
    (inline,) = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert policy["script-src"] == f"{src} 'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    assert "/api/openapi.json" in inline


# ---- L8: HSTS ------------------------------------------------------------------------------


@pytest.fixture
def failing_api() -> Iterator[TestClient]:
    """The app, whose composition root fails (every route that needs it answers 500)."""

    def broken() -> None:
        raise RuntimeError("no container")

    app = create_app(docs=True)
    app.dependency_overrides[get_container] = broken
    with TestClient(app, raise_server_exceptions=False) as api:
        yield api


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/health", 200), ("/api/nope", 404), ("/api/workers", 500), ("/api/docs", 200)],
)
def test_l8_every_api_response_asks_for_https_for_a_year(
    failing_api: TestClient, path: str, status: int
) -> None:
    response = failing_api.get(path)

    assert response.status_code == status
    assert response.headers["strict-transport-security"] == HSTS


def test_l8_a_refused_token_is_answered_with_hsts_too(api: Api) -> None:
    response = api.client.get("/api/workers", headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    assert response.headers["strict-transport-security"] == HSTS


# ---- L7: the instance types an admin may launch ---------------------------------------------


def instance_count(api: Api) -> int:
    reservations = api.ec2.describe_instances()["Reservations"]
    return sum(len(reservation["Instances"]) for reservation in reservations)


def test_l7_an_admin_cannot_launch_a_type_outside_the_allowed_ones(api: Api) -> None:
    response = api.client.post(
        "/api/workers", json={"name": "big", "instance_type": "p5.48xlarge"}, headers=api.admin
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    ((detail),) = error["details"]
    assert detail["field"] == "instance_type"
    assert "p5.48xlarge is not an allowed instance type" in detail["problem"]
    for allowed in ("c5.2xlarge", "m5zn.metal", "m7i.metal-24xl"):
        assert allowed in detail["problem"]
    assert instance_count(api) == 0
    assert api.client.get("/api/workers", headers=api.admin).json()["workers"] == []


@pytest.mark.parametrize("role", ["manager", "user"])
def test_l7_who_may_not_launch_is_refused_before_learning_the_allowed_types(
    api: Api, role: str
) -> None:
    response = api.client.post(
        "/api/workers",
        json={"name": "big", "instance_type": "p5.48xlarge"},
        headers=api.headers("max", role),
    )

    assert response.status_code == 403
    assert "m5zn.metal" not in response.text


@pytest.mark.parametrize("instance_type", [None, "m5zn.metal", "m7i.metal-24xl"])
def test_l7_the_default_type_and_the_allowed_ones_launch(
    api: Api, instance_type: str | None
) -> None:
    body = {"name": "lab"} | ({"instance_type": instance_type} if instance_type else {})

    response = api.client.post("/api/workers", json=body, headers=api.admin)

    assert response.status_code == 201, response.text
    assert response.json()["instance_type"] == (instance_type or "c5.2xlarge")


def test_l7_the_settings_always_allow_the_default_worker_type() -> None:
    assert settings().launchable_instance_types == ("m5zn.metal",)
    configured = settings(
        worker_instance_type="c5.metal", allowed_instance_types="m5zn.metal,m7i.metal-24xl"
    )
    assert configured.launchable_instance_types == ("c5.metal", "m5zn.metal", "m7i.metal-24xl")


@pytest.mark.parametrize("value", ["m5zn.metal,", "M5ZN.METAL", "m5zn.metal, c5.metal", "*"])
def test_l7_a_malformed_allowed_types_list_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="allowed_instance_types"):
        settings(allowed_instance_types=value)
