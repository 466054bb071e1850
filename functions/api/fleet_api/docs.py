"""Swagger UI at /api/docs, for the local stack only (API_DOCS): a pinned release from the
CDN, checked by Subresource Integrity, on a page whose policy runs nothing else.

The page shares the dashboard's origin, where the dashboard keeps its tokens, so a
floating `swagger-ui-dist@5` would let any new release (or a compromised CDN) run script
there. Deployed stacks serve no docs at all (finding L5).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

SWAGGER_UI_VERSION = "5.35.0"
_CDN = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"


@dataclass(frozen=True)
class Asset:
    url: str
    integrity: str  # sha384 of the file as npm publishes it (jsDelivr serves it unchanged)


SWAGGER_JS = Asset(
    f"{_CDN}/swagger-ui-bundle.js",
    "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9",
)
SWAGGER_CSS = Asset(
    f"{_CDN}/swagger-ui.css",
    "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I",
)


def install_docs(app: FastAPI, *, path: str, openapi_url: str) -> None:
    """Serve the docs page at `path` for the schema at `openapi_url` (not in the schema)."""
    start = _start_script(openapi_url)
    page = _page(app.title, start)
    headers = {
        "Content-Security-Policy": _policy(start),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get(path, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)


def _start_script(openapi_url: str) -> str:
    options = {"url": openapi_url, "dom_id": "#swagger-ui", "deepLinking": True}
    return f"SwaggerUIBundle({json.dumps(options)});"


def _page(title: str, start: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{SWAGGER_CSS.url}" integrity="{SWAGGER_CSS.integrity}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER_JS.url}" integrity="{SWAGGER_JS.integrity}" crossorigin="anonymous"></script>
<script>{start}</script>
</body>
</html>
"""  # noqa: E501 (the tags read better whole)


def _policy(start: str) -> str:
    """Scripts: that one file and the start-up line above (by its hash); Swagger UI sets
    inline styles, so styles may be inline; it fetches only the schema, from this origin."""
    digest = base64.b64encode(hashlib.sha256(start.encode()).digest()).decode()
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {SWAGGER_JS.url} 'sha256-{digest}'",
            f"style-src {SWAGGER_CSS.url} 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
