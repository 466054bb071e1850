"""Hostile requests: huge or deep bodies, wrong content types, broken Unicode.

Each must get a clean 4xx answer in the API's JSON error shape, never a 500 or a stack
trace, and must change nothing (the `api` fixture checks the fleet after each test).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.shared_fleet import Fleet, running_fleet

CREATE = "/api/workers"
IMPORT = "/api/workers/import"


def refused(response: Any, *statuses: int) -> dict[str, Any]:
    """The error of a clean refusal: one of `statuses`, JSON `{"error": {code, message}}`."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str)
    assert isinstance(body["error"]["message"], str)
    return body["error"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet() as fleet:
        yield fleet


@pytest.fixture
def api(fleet: Fleet) -> Iterator[Fleet]:
    """The module's fleet; a test that only sends hostile requests must leave it as it was."""
    before = fleet.snapshot()
    yield fleet
    assert fleet.snapshot() == before, "a refused request changed the fleet"


def post_raw(
    api: Fleet, path: str, body: bytes, content_type: str | None = "application/json"
) -> Any:
    headers = dict(api.admin)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return api.client.post(path, content=body, headers=headers)


# ---- size and shape ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps({"name": "x" * 2_000_000}).encode(), id="a 2 MB name"),
        pytest.param(
            json.dumps({"name": "lab", "padding": ["y" * 1000] * 2000}).encode(), id="2 MB extra"
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100k nested arrays"),
        pytest.param(b'{"name":' * 50_000 + b'"x"' + b"}" * 50_000, id="50k nested objects"),
        pytest.param(b'{"name": ' + b"9" * 10_000 + b"}", id="a 10k-digit number"),
        pytest.param(b'{"name": 1e999999}', id="an infinite number"),
    ],
)
def test_an_oversized_or_pathological_body_is_refused_cleanly(api: Fleet, body: bytes) -> None:
    refused(post_raw(api, CREATE, body), 400, 413, 422)


# ---- content types ----------------------------------------------------------------------------
GOOD = json.dumps({"name": "lab"}).encode()


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "image/png",
        "application/json-patch",
        "nonsense",
        "",
    ],
)
def test_a_body_that_is_not_declared_json_is_refused(api: Fleet, content_type: str) -> None:
    refused(post_raw(api, CREATE, GOOD, content_type), 415, 422)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"name"',
        b"name=lab",
        b"\x00\x00\x00",
        b"\xef\xbb\xbf" + GOOD,  # a UTF-8 byte order mark
        b'{"name": "lab", "name": "lab"}',  # a duplicate key stays one key: still valid
    ],
)
def test_a_body_that_is_not_one_json_object_is_refused_or_understood(
    fleet: Fleet, body: bytes
) -> None:
    response = post_raw(fleet, CREATE, body)

    if response.status_code == 201:
        assert response.json()["name"] == "lab"
    else:
        refused(response, 400, 422)


# ---- bad Unicode ------------------------------------------------------------------------------
BAD_TEXT = [
    pytest.param(b'"\\ud800"', id="a lone high surrogate"),
    pytest.param(b'"lab\\udfff"', id="a lone low surrogate"),
    pytest.param(b'"\\u0000"', id="an escaped NUL"),
    pytest.param(b'"lab\\u0000evil"', id="a NUL inside"),
    pytest.param(b'"\\u001b[31m"', id="a terminal escape"),
    pytest.param(b'"\\u0085"', id="a C1 control"),
    pytest.param(b'"\xc0\xaf"', id="overlong UTF-8"),
    pytest.param(b'"\xed\xa0\x80"', id="a surrogate encoded as UTF-8"),
    pytest.param(b'"\xff\xfe"', id="bytes that are not UTF-8"),
    pytest.param(b'"\xe2\x82"', id="a truncated UTF-8 sequence"),
]


@pytest.mark.parametrize("text", BAD_TEXT)
@pytest.mark.parametrize("field", ["name", "owner"])
def test_bad_unicode_in_a_value_is_refused(api: Fleet, field: str, text: bytes) -> None:
    body = b'{"name": "lab", "' + field.encode() + b'": ' + text + b"}"

    refused(post_raw(api, CREATE, body), 400, 422)


@pytest.mark.parametrize("text", BAD_TEXT)
def test_bad_unicode_in_a_key_is_refused(api: Fleet, text: bytes) -> None:
    body = b'{"name": "lab", ' + text + b": 1}"

    refused(post_raw(api, CREATE, body), 400, 422)


@pytest.mark.parametrize("text", BAD_TEXT)
def test_bad_unicode_in_an_import_is_refused(api: Fleet, text: bytes) -> None:
    instance_id = api.launch_instance()
    body = b'{"instance_id": "' + instance_id.encode() + b'", "name": ' + text + b"}"

    refused(post_raw(api, IMPORT, body), 400, 422)


@pytest.mark.parametrize(
    "query",
    [
        "owner=%ff%fe",
        "owner=%c0%af",
        "owner=%ed%a0%80",
        "owner=%00",
        "owner=" + "a" * 10_000,
        "status=%00",
        "status=running%00",
        "status=%ff",
    ],
)
def test_bad_bytes_in_the_query_are_refused_or_match_nothing(api: Fleet, query: str) -> None:
    response = api.client.get(f"/api/workers?{query}", headers=api.admin)

    if response.status_code == 200:
        assert response.json() == {"workers": []}
    else:
        refused(response, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/api/workers/w-%00",
        "/api/workers/w-%ff",
        "/api/workers/w-%c0%af",
        "/api/workers/w-abc%2f..%2f..",
        "/api/workers/" + "w-" + "a" * 5000,
        "/api/workers/w-abc/start%00",
    ],
)
def test_bad_bytes_in_the_path_are_refused(api: Fleet, path: str) -> None:
    refused(api.client.post(path, headers=api.admin), 404, 405, 422)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer \x00",
        "Bearer " + "a" * 100_000,
        "Bearer a.b.c",
        "Bearer ....",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
        "Bearer é",
    ],
)
def test_a_malformed_authorization_header_is_a_401(api: Fleet, authorization: str) -> None:
    header = authorization.encode()  # raw bytes on the wire, as a client could send them
    response = api.client.get("/api/workers", headers={"Authorization": header})  # type: ignore[dict-item]

    assert refused(response, 401)["code"] == "unauthorized"
