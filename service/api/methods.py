"""Which methods each path answers, said right: ``HEAD`` wherever ``GET`` is, and an ``Allow`` that lists them all.

Litestar answers neither as HTTP asks. A ``GET`` route does not answer ``HEAD`` (``HEAD /console`` was a 405), and
the ``OPTIONS`` answer of a path whose handlers were registered one by one lists only the methods of the first
(its handler closes over the route as it was then: ``OPTIONS /v1/tasks`` said ``GET, OPTIONS``, not ``POST``). Both
are put right here, in front of Litestar's routing, for every route at once: a ``HEAD`` runs as the ``GET`` of its
path with the body dropped (the headers, ``content-length`` included, are the ``GET``'s), and every ``OPTIONS``
answer's ``Allow`` is rebuilt from the app's routes as they finally are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute

__all__ = ["answer_every_method"]


def answer_every_method(app: Litestar) -> None:
    """Make ``app`` answer ``HEAD`` wherever it answers ``GET``, and list every method of a path in ``Allow``."""
    app.asgi_handler = _Methods(app.asgi_handler, _allowed(app))  # in front of routing, which answers 405


def _allowed(app: Litestar) -> dict[str, bytes]:
    """Each route's path template -> its ``Allow`` value (``HEAD`` beside ``GET``)."""
    allowed = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods = set(route.methods) | {"OPTIONS"}
            if "GET" in methods:
                methods.add("HEAD")
            # The router names a request's route (scope["path_template"]) by its path_format.
            allowed[route.path_format] = ", ".join(sorted(methods)).encode()
    return allowed


class _Methods:
    # ASGI's scope and messages as plain dicts: Litestar's TypedDicts do not let a scope change its method.
    def __init__(self, app: Any, allowed: Mapping[str, bytes]) -> None:
        self._app = app
        self._allowed = allowed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
        elif scope["method"] == "HEAD":
            await self._head(scope, send)
        else:
            # OPTIONS answers, and 405s, carry an Allow.
            await self._app(scope, receive, self._with_allow(scope, send))

    async def _head(self, scope: dict[str, Any], send: Any) -> None:
        """The path's ``GET``, without its body. The app then sees the client leave, so a stream ends at once."""
        get = {**scope, "method": "GET"}
        send_allow = self._with_allow(get, send)
        answered = asyncio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send_head(message: dict[str, Any]) -> None:
            if answered.is_set():
                return
            if message["type"] == "http.response.start":
                await send_allow(message)
            elif message["type"] == "http.response.body":
                await send_allow({"type": "http.response.body", "body": b"", "more_body": False})
                answered.set()

        await self._app(get, receive, send_head)

    def _with_allow(self, scope: dict[str, Any], send: Any) -> Any:
        async def send_allow(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and any(k.lower() == b"allow" for k, _ in message["headers"]):
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"allow"]
                said = b",".join(v for k, v in message["headers"] if k.lower() == b"allow")
                # The router names the route on this same scope; a method it does not answer stops it first (405).
                allow = self._allowed.get(scope.get("path_template", "")) or _with_head(said)
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            await send(message)

        return send_allow


def _with_head(allow: bytes) -> bytes:
    methods = {m.strip() for m in allow.decode("latin-1").split(",") if m.strip()}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)).encode()
