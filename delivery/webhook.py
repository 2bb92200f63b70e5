"""The webhook channel: sign an Event and POST it once.

The HTTP API is httpx; its transport is aiohttp's (``httpx-aiohttp``), chosen by measurement: httpx's own
pool slows sharply with many requests in flight (see ``scripts/bench``). Connections go through
:class:`delivery.address_guard.GuardedResolver`, so the address that was checked is the one connected to.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from delivery.address_guard import check_literal, guarded_session_factory, parse_callback_url
from delivery.errors import ForbiddenAddress, InvalidCallbackUrl
from delivery.policy import AttemptResult, parse_retry_after
from delivery.signing import webhook_headers

# Most webhooks in flight at once per process; beyond it requests wait for a connection.
DEFAULT_MAX_CONNECTIONS = 256
# How much of an error message an attempt keeps.
MAX_ERROR_CHARS = 300


def create_client(
    *, timeout_s: float, allow_private: bool, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> httpx.AsyncClient:
    """The webhook HTTP client: aiohttp transport, guarded DNS, no redirects."""
    transport = AiohttpTransport(
        client=guarded_session_factory(allow_private=allow_private, limit=max_connections),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout_s), follow_redirects=False)


class WebhookSender:
    """Sends one signed webhook and reports what came back; never raises for the receiver's faults."""

    def __init__(self, *, client: httpx.AsyncClient, allow_private: bool, user_agent: str) -> None:
        self._client = client
        self._allow_private = allow_private
        self._user_agent = user_agent

    async def send(self, url: str, msg_id: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        started = time.perf_counter()
        try:
            target = parse_callback_url(url)
            # aiohttp skips its resolver for plain IP literals: check them here, in every spelling.
            check_literal(target.host, allow_private=self._allow_private)
            headers = webhook_headers(secrets, msg_id, int(time.time()), body, user_agent=self._user_agent)
            response = await self._client.post(url, content=body, headers=headers)
            await response.aclose()
        except ForbiddenAddress as exc:
            return AttemptResult(None, str(exc), _ms_since(started), forbidden=True)
        except InvalidCallbackUrl as exc:
            return AttemptResult(None, f"invalid URL: {exc}", _ms_since(started), forbidden=True)
        except httpx.HTTPError as exc:
            return AttemptResult(None, _describe_transport_error(exc), _ms_since(started))
        except OSError as exc:  # DNS failures surface from the guarded resolver as OSError
            return AttemptResult(None, _describe(exc), _ms_since(started))
        retry_after = None
        if response.status_code in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        error = None if response.is_success else f"HTTP {response.status_code}"
        return AttemptResult(response.status_code, error, _ms_since(started), retry_after_s=retry_after)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    # httpx-aiohttp maps every aiohttp connection error, "connection refused" included, to ConnectTimeout:
    # look at the aiohttp error underneath to say what really happened.
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        errno = cause.os_error.errno
        reason = os.strerror(errno).lower() if errno else str(cause.os_error)
        return f"cannot connect: {reason}"[:MAX_ERROR_CHARS]
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection without answering"
    if isinstance(exc, httpx.TimeoutException) or isinstance(cause, asyncio.TimeoutError):
        return "timed out"
    return _describe(cause if cause is not None else exc)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
