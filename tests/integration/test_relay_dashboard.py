"""The relay serves the dashboard: its files with a strict policy, and its sign-in settings."""

from __future__ import annotations

import httpx
import pytest

from relay.dashboard import content_security_policy, dashboard_config
from relay.settings import RelaySettings
from tests.integration.conftest import RelayFactory

TOPIC = "arn:aws:sns:us-east-1:123456789012:events"


def test_the_dashboard_page_and_its_modules_are_served_with_a_strict_policy(
    start_relay: RelayFactory,
) -> None:
    relay = start_relay()
    page = httpx.get(f"{relay.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    module = httpx.get(f"{relay.url}/js/sse-client.js")
    assert module.status_code == 200
    assert "javascript" in module.headers["content-type"]
    assert "export class RealtimeClient" in module.text
    # Revalidated, not refetched: the files carry validators.
    assert (
        httpx.get(
            f"{relay.url}/js/sse-client.js", headers={"If-None-Match": module.headers["etag"]}
        ).status_code
        == 304
    )


def test_nothing_outside_the_dashboard_is_served(start_relay: RelayFactory) -> None:
    relay = start_relay()
    for path in ("/nope.js", "/js/../../relay/settings.py", "/%2e%2e/relay/settings.py"):
        response = httpx.get(relay.url + path)
        assert response.status_code == 404, path
        assert "RelaySettings" not in response.text
    # The relay's own routes come first.
    assert httpx.get(f"{relay.url}/api/events/health").json()["status"] in ("ok", "bus_unavailable")
    assert httpx.get(f"{relay.url}/api/events/nope").status_code == 404


def test_development_sign_in_lists_the_demo_users(start_relay: RelayFactory) -> None:
    relay = start_relay(DASHBOARD_SIGN_IN="development", DASHBOARD_DEV_USERS="ada:admin,alice:user")
    config = httpx.get(f"{relay.url}/config.json").json()
    assert config["sign_in"] == {
        "mode": "development",
        "token_url": "/auth/dev/token",
        "users": [{"username": "ada", "role": "admin"}, {"username": "alice", "role": "user"}],
    }


def test_oidc_sign_in_gives_the_code_flow_endpoints_and_allows_the_token_call() -> None:
    settings = RelaySettings(
        topic_arn=TOPIC,
        oidc_issuer="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc",
        oidc_audience="client123",
        oidc_authorize_url="https://fleet.auth.eu-west-1.amazoncognito.com/oauth2/authorize",
        oidc_token_url="https://fleet.auth.eu-west-1.amazoncognito.com/oauth2/token",
        oidc_logout_url="https://fleet.auth.eu-west-1.amazoncognito.com/logout",
    )
    sign_in = dashboard_config(settings)["sign_in"]
    assert sign_in["mode"] == "oidc"
    assert sign_in["client_id"] == "client123"  # the audience, unless set apart
    assert sign_in["token_url"].endswith("/oauth2/token")
    policy = content_security_policy(settings)
    assert "connect-src 'self' https://fleet.auth.eu-west-1.amazoncognito.com" in policy


def test_a_deployment_without_sign_in_endpoints_says_so() -> None:
    settings = RelaySettings(topic_arn=TOPIC, table_name="fleet")
    assert dashboard_config(settings)["sign_in"] == {"mode": "none"}
    assert "connect-src 'self';" in content_security_policy(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("dashboard_dev_users", "ada:root"),
        ("dashboard_dev_users", "<script>:admin"),
        ("oidc_authorize_url", "javascript:alert(1)"),
        ("dashboard_sign_in", "magic"),
    ],
)
def test_bad_dashboard_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        RelaySettings.model_validate({"topic_arn": TOPIC, "table_name": "fleet", variable: value})
