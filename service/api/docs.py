"""The API's documentation pages under ``/schema``: Swagger UI, with every file it loads served by this node.

``/schema`` and ``/schema/swagger`` answer the Swagger UI page; ``/schema/openapi.json`` and ``/schema/openapi.yaml``
the document. Swagger UI's script and stylesheet come from the ``swagger-ui-py`` wheel, at ``/schema/assets/``; the
page's own start-up script is ``/static/swagger-init.js``. Litestar's other renderers load their bundles from a CDN,
so they are not offered: without internet they would be blank pages.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components
from litestar.params import FromPath
from litestar.response import File

from service.api.openapi import SECURITY_SCHEMES, TAGS

if TYPE_CHECKING:
    from litestar import Request

DOCS_PATH = "/schema"
ASSETS_PATH = "/assets"

# What the docs pages may load: this node's scripts, styles and images (Swagger UI draws its icons as data: URLs)
# and requests to this node ("Try it out"). No inline script runs, so an injected one could not read a key
# typed into "Authorize".
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# The Swagger UI files the page uses, by name, with their media types: nothing else in the package is served.
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
# What the document says of the API as a whole (Markdown), above its operations.
DESCRIPTION = """Relay runs work on workers and delivers each task's events to its client: by WebSocket push first, then \
by signed HTTP webhook with retries; what cannot be delivered lands in the dead letters.

Send `Authorization: Bearer <token>`: a tenant's API key for its own things, the admin token for everyone's and for \
`/v1/ops/`. Every error is JSON with a human-readable `detail`. Times are RFC 3339 in UTC. Lists page with \
`next_cursor` (null on the last page). A submission with an `Idempotency-Key` header may be retried safely: the same \
key returns the first answer.

The `webhooks` section describes what Relay POSTs to receivers (Standard Webhooks headers and signature)."""
# The files change only with the package's version, which a restart brings.
ASSET_CACHE_CONTROL = "public, max-age=3600"


def swagger_ui_dir() -> Path:
    """Where the ``swagger-ui-py`` wheel keeps Swagger UI's files (found without importing it, which loads Jinja2)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed (a dependency of Relay)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class SwaggerPage(OpenAPIRenderPlugin):
    """Swagger UI's page: local files only, and no inline script (the document is fetched from its own route)."""

    def __init__(self, *, assets_url: str, init_js_url: str, favicon_url: str) -> None:
        self.js_url = f"{assets_url}/swagger-ui-bundle.js"
        self.css_url = f"{assets_url}/swagger-ui.css"
        self.init_js_url = init_js_url
        super().__init__(
            path="/swagger", favicon=f'<link rel="icon" type="image/svg+xml" href="{html.escape(favicon_url)}">'
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema["info"]["title"]))
        document_url = html.escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  {self.favicon}
  <link rel="stylesheet" href="{html.escape(self.css_url)}">
  <script src="{html.escape(self.js_url)}" defer></script>
  <script src="{html.escape(self.init_js_url)}" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{document_url}"></div>
</body>
</html>
""".encode()


@get(f"{ASSETS_PATH}/{{name:str}}", name="docs-asset", include_in_schema=False, sync_to_thread=False)
def docs_asset(name: FromPath[str]) -> File:
    """One of Swagger UI's files, from the installed package."""
    media_type = SWAGGER_UI_FILES.get(name)
    if media_type is None:
        raise NotFoundException(f"no such file under {DOCS_PATH}{ASSETS_PATH}")
    return File(
        path=swagger_ui_dir() / name,
        media_type=media_type,
        content_disposition_type="inline",
        headers={"Cache-Control": ASSET_CACHE_CONTROL},
    )


def docs_config(*, title: str, version: str, static_url: str) -> OpenAPIConfig:
    """The OpenAPI document and its pages; ``static_url`` is where the app serves ``service/api/static``."""
    swagger = SwaggerPage(
        assets_url=DOCS_PATH + ASSETS_PATH,
        init_js_url=f"{static_url}/swagger-init.js",
        favicon_url=f"{static_url}/favicon.svg",
    )
    router = Router(
        DOCS_PATH,
        route_handlers=[docs_asset],
        include_in_schema=False,
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
            ResponseHeader(name="Referrer-Policy", value="no-referrer"),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ],
    )
    return OpenAPIConfig(
        title=title,
        version=version,
        description=DESCRIPTION,
        components=Components(security_schemes=dict(SECURITY_SCHEMES)),
        tags=list(TAGS),
        # The first plugin also answers the root, /schema.
        render_plugins=[swagger, YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"])],
        openapi_router=router,
    )
