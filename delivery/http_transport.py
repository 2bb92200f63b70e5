"""httpx's transport interface over one aiohttp session: the webhook client's HTTP stack.

httpx is the API the webhook sender speaks; underneath, aiohttp moves the bytes. This transport does only what a
webhook needs (one request, no proxy, no streaming upload, no redirects, a bounded response), which costs a
fraction of a general adapter: a signed POST through ``httpx-aiohttp`` took about 510 µs of the client's CPU
against 110 µs for aiohttp alone (measured with 64 in flight against the bench receiver); the conversions and
per-request setup of the general adapter were most of the difference.

Errors come out as httpx's, with aiohttp's error as ``__cause__`` (the sender words its message from that).
Anything that is not an aiohttp error (the address guard's refusal, a DNS failure) passes through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import httpx

# A receiver's answer is read up to this much (so that its connection can be kept) and not a byte more.
MAX_RESPONSE_BYTES = 64 * 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests on an aiohttp session built by ``session_factory`` (on first use, in the running loop)."""

    def __init__(self, session_factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._factory()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout(request.extensions.get("timeout")),
            )
            try:
                body = await _bounded_body(response)
            finally:
                response.release()
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from exc
        except TimeoutError as exc:  # aiohttp's total/pool timeouts are plain asyncio timeouts
            raise httpx.PoolTimeout("timed out", request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            # A stream, not content=: httpx decodes content at once, as its Content-Encoding says, and a gzip body
            # of 64 KiB can hold 64 MiB (one that fails to decode would turn a 2xx into an error).
            stream=httpx.ByteStream(body),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _timeout(self, timeout: Mapping[str, float | None] | None) -> aiohttp.ClientTimeout:
        timeout = timeout or {}
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        known = self._timeouts.get(key)
        if known is None:
            # The whole attempt is bounded too, by the read timeout (RELAY_WEBHOOK_TIMEOUT: seconds per attempt):
            # with each read and write in time, a receiver that trickles its answer or reads the body slowly would
            # otherwise hold the attempt for ever (and past its lease, when another worker sends the webhook again).
            total = key[1]
            known = self._timeouts[key] = aiohttp.ClientTimeout(
                total=total, sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return known

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body when it is small enough to read whole (which lets its connection be kept), else none."""
    length = response.content_length
    if length is not None and length > MAX_RESPONSE_BYTES:
        return b""  # not read: release() closes the connection instead of draining it
    body = await response.content.read(MAX_RESPONSE_BYTES + 1)
    return body[:MAX_RESPONSE_BYTES]


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionError | asyncio.IncompleteReadError):
        return httpx.NetworkError(message, request=request)
    return httpx.TransportError(message, request=request)
