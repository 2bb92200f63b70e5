"""``GET /``: the demo page, and ``GET /console``: the operator console. Their scripts, styles and the browser
client are static files under ``/static``; neither loads anything from elsewhere."""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, get
from litestar.response import File

DEMO_PAGE = Path(__file__).with_name("static") / "index.html"
CONSOLE_PAGE = Path(__file__).with_name("static") / "console.html"

# The page loads nothing from elsewhere and runs no inline script: say so, so an injected one would not run
# on a page that holds an API key.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@get("/", name="demo", include_in_schema=False, exclude_from_auth=True)
async def demo_page() -> File:
    """The demo page: submit a task and follow it live over ``/v1/ws`` with ``/static/relay.js``."""
    return _page(DEMO_PAGE)


@get("/console", name="console", include_in_schema=False, exclude_from_auth=True)
async def console_page() -> File:
    """The operator console: it asks for a token and reads the public API (``/v1/stats`` first)."""
    return _page(CONSOLE_PAGE)


def _page(path: Path) -> File:
    return File(
        path=path,
        media_type=MediaType.HTML,
        content_disposition_type="inline",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )
