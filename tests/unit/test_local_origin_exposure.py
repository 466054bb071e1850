"""Finding L10: the local stack stays on this machine unless asked, and its origin answers
only for the host names it was started with (a DNS-rebinding page gets nothing)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cmlfleet.identity import require_https
from devstack.__main__ import DevstackError, check_exposure, main
from devstack.fleetstack import local_issuer_url
from devstack.origin import LocalOrigin, accepted_hosts, is_loopback

PORT = 8080


def _app(name: str) -> Starlette:
    async def answer(_: Request) -> JSONResponse:
        return JSONResponse({"from": name})

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


def _get(path: str, host: str, *, bound: str = "127.0.0.1") -> httpx.Response:
    """GET `path` from an origin bound to `bound`:PORT, with `Host: host`."""
    origin = LocalOrigin(
        api=_app("api"),
        relay_url="http://127.0.0.1:9",  # never reached: these paths are the API's and issuer's
        auth=_app("auth"),
        hosts=accepted_hosts(bound, PORT),
    )

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=origin)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.get(path, headers={"Host": host})

    return asyncio.run(call())


# ---------------------------------------------------------------- the Host check


@pytest.mark.parametrize("path", ["/auth/dev/token", "/api/workers", "/"])
def test_l10_a_request_for_another_host_name_is_refused_with_421(path: str) -> None:
    response = _get(path, "evil.example")
    assert response.status_code == 421
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "misdirected_request"
    assert "127.0.0.1:8080" in error["message"]


@pytest.mark.parametrize(
    "host", ["evil.example:8080", "127.0.0.1:8081", "127.0.0.1", "localhost.evil.example:8080"]
)
def test_l10_a_near_miss_host_is_refused_too(host: str) -> None:
    assert _get("/api/workers", host).status_code == 421


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8080", "localhost:8080", "LocalHost:8080", "[::1]:8080"]
)
def test_l10_the_loopback_names_the_stack_started_with_are_answered(host: str) -> None:
    assert _get("/api/workers", host).json() == {"from": "api"}
    assert _get("/auth/dev/token", host).json() == {"from": "auth"}


def test_l10_a_remote_bind_also_answers_for_its_own_address_and_this_machines_name() -> None:
    assert _get("/api/workers", "192.168.1.5:8080", bound="192.168.1.5").status_code == 200
    assert _get("/api/workers", "192.168.1.5:8080").status_code == 421
    wildcard = accepted_hosts("0.0.0.0", PORT)
    assert {"0.0.0.0:8080", f"{socket.gethostname().lower()}:8080"} <= wildcard
    assert "evil.example:8080" not in wildcard


def test_l10_on_port_80_a_host_without_a_port_is_the_same_name() -> None:
    assert accepted_hosts("127.0.0.1", 80) >= {"localhost", "localhost:80", "127.0.0.1"}


# ---------------------------------------------------------------- binding beyond loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_l10_loopback_hosts_start_without_a_word(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert is_loopback(host)
    check_exposure(host, PORT, allow_remote=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "dev-box.example"])
def test_l10_a_non_loopback_host_is_refused_without_allow_remote(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(DevstackError) as refused:
        check_exposure(host, PORT, allow_remote=False)
    message = str(refused.value)
    assert "/auth/dev/token" in message
    assert "--allow-remote" in message


def test_l10_the_cli_refuses_before_binding_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def port_check(host: str, port: int) -> None:
        raise AssertionError(f"reached the port check for {host}:{port}")

    monkeypatch.setattr("devstack.__main__._check_port_free", port_check)
    assert main(["run", "--host", "0.0.0.0", "--port", "8080"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("devstack: --host 0.0.0.0 ")
    assert "--allow-remote" in err


def test_l10_allow_remote_starts_with_a_warning_of_what_is_exposed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_exposure("0.0.0.0", PORT, allow_remote=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("WARNING: ")
    assert "0.0.0.0:8080" in err
    assert "/auth/dev/token" in err
    assert "admin" in err
    assert "development only" in err


# ---------------------------------------------------------------- one address beyond loopback


@pytest.mark.parametrize("host", ["192.168.1.10", "10.0.0.7", "fe80::1", "dev-box.example"])
@pytest.mark.parametrize("allow_remote", [True, False])
def test_l10_one_address_beyond_loopback_is_refused_even_with_allow_remote(
    host: str, allow_remote: bool
) -> None:
    """The functions and the relay fetch the issuer's keys on loopback, which a stack bound
    to one LAN address does not answer: sign-in would fail on every request."""
    with pytest.raises(DevstackError) as refused:
        check_exposure(host, PORT, allow_remote=allow_remote)
    message = str(refused.value)
    assert "bind to 0.0.0.0 with --allow-remote to reach it from other machines" in message


def test_l10_the_cli_refuses_a_lan_address_with_allow_remote_before_binding_anything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def port_check(host: str, port: int) -> None:
        raise AssertionError(f"reached the port check for {host}:{port}")

    monkeypatch.setattr("devstack.__main__._check_port_free", port_check)
    assert main(["run", "--host", "192.168.1.10", "--allow-remote", "--port", "8080"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("devstack: --host 192.168.1.10")
    assert "bind to 0.0.0.0 with --allow-remote" in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_l10_a_wildcard_with_allow_remote_still_starts(host: str) -> None:
    check_exposure(host, PORT, allow_remote=True)  # a warning, no refusal


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/auth"),
        ("localhost", "http://127.0.0.1:8080/auth"),  # the origin binds it as 127.0.0.1
        ("0.0.0.0", "http://127.0.0.1:8080/auth"),
        ("::", "http://[::1]:8080/auth"),  # answered even where :: takes IPv6 alone
        ("127.0.0.2", "http://127.0.0.2:8080/auth"),
        ("::1", "http://[::1]:8080/auth"),
        ("[::1]", "http://[::1]:8080/auth"),
    ],
)
def test_l10_the_issuer_is_on_a_loopback_address_the_origin_listens_on(
    host: str, issuer: str
) -> None:
    assert local_issuer_url(host, PORT) == issuer
    assert require_https(issuer, "the issuer")  # its keys may be fetched over http
