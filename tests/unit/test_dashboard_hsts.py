"""Issue 13 (finding L8): the relay's dashboard files ask browsers to keep to HTTPS."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from relay.dashboard import DashboardFiles
from relay.settings import RelaySettings

HSTS = "max-age=31536000; includeSubDomains"


def test_l8_the_dashboard_files_are_served_with_hsts(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>fleet</title>")
    (tmp_path / "main.js").write_text("export {};")
    settings = RelaySettings(
        topic_arn="arn:aws:sns:us-east-1:123456789012:events", table_name="fleet"
    )
    app = Starlette(routes=[Mount("/", DashboardFiles(tmp_path, settings))])

    with TestClient(app) as client:
        responses = [client.get("/"), client.get("/main.js")]

    for response in responses:
        assert response.status_code == 200
        assert response.headers["strict-transport-security"] == HSTS
