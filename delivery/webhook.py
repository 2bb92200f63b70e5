"""The webhook channel: sign an Event and POST it once.

The HTTP API is httpx; underneath it is a transport of our own (:mod:`delivery.http11`), chosen by measurement:
httpx's own pool slows sharply with many requests in flight (see ``scripts/bench``), and a general client's
per-request setup was most of the sender's CPU. Every new connection goes to an address the address guard checked,
so the address that was checked is the one connected to.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
from collections.abc import Sequence

import httpx

from delivery.address_guard import check_literal, parse_callback_url
from delivery.errors import ForbiddenAddress, InvalidCallbackUrl
from delivery.http11 import ClosedByReceiver, Http11Transport, InvalidAnswer
from delivery.policy import AttemptResult, parse_retry_after
from delivery.signing import webhook_headers

# Most webhooks in flight at once per process; beyond it requests wait for a connection.
DEFAULT_MAX_CONNECTIONS = 256
# Callback URLs whose parse is remembered (the least recently used go first).
MAX_PARSED_URLS = 4096
# How much of an error message an attempt keeps.
MAX_ERROR_CHARS = 300


def create_client(
    *, timeout_s: float, allow_private: bool, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> httpx.AsyncClient:
    """The webhook HTTP client: our HTTP/1.1 transport, guarded DNS, no redirects, no cookies."""
    transport = Http11Transport(allow_private=allow_private, max_connections=max_connections)
    client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout_s), follow_redirects=False)
    # One client sends every tenant's webhooks: a cookie that one receiver sets must never go out with another
    # tenant's webhook to the same host. (Keeping none also saves the jar's work on every response.)
    client._cookies = _NoCookies()
    return client


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing a response sets."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class WebhookSender:
    """Sends one signed webhook and reports what came back; never raises for the receiver's faults."""

    def __init__(self, *, client: httpx.AsyncClient, allow_private: bool, user_agent: str) -> None:
        self._client = client
        self._allow_private = allow_private
        self._user_agent = user_agent
        self._extensions = {"timeout": client.timeout.as_dict()}

    async def send(self, url: str, msg_id: str, body: bytes, secrets: Sequence[str]) -> AttemptResult:
        started = time.perf_counter()
        try:
            host, parsed = _target(url)
            # Refused here, before any work, as well as by the transport (which checks every new connection).
            check_literal(host, allow_private=self._allow_private)
            headers = webhook_headers(secrets, msg_id, int(time.time()), body, user_agent=self._user_agent)
            # A request built whole, not through client.post(): that merges a base URL, default headers and
            # cookies, none of which a webhook has, and was a fifth of the sender's CPU.
            request = httpx.Request("POST", parsed, headers=headers, content=body, extensions=self._extensions)
            # stream=True: the answer's body is never read, so never decoded (see delivery.http11).
            response = await self._client.send(request, stream=True)
            await response.aclose()
        except ForbiddenAddress as exc:
            return AttemptResult(None, str(exc), _ms_since(started), forbidden=True)
        except (InvalidCallbackUrl, httpx.InvalidURL) as exc:
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


@functools.lru_cache(maxsize=MAX_PARSED_URLS)
def _target(url: str) -> tuple[str, httpx.URL]:
    """The host and httpx's parse of ``url``, remembered: a destination's URL is parsed once, not per webhook."""
    return parse_callback_url(url).host, httpx.URL(url)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _describe_transport_error(exc: httpx.HTTPError) -> str:
    # The transport's cause says best what really happened (which connection error, for one).
    cause = exc.__cause__
    if isinstance(exc, httpx.ConnectError) and isinstance(cause, OSError):
        return f"cannot connect: {_connect_failure(cause)}"[:MAX_ERROR_CHARS]
    if isinstance(cause, InvalidAnswer):  # the answer broke HTTP/1.1 or the transport's bounds
        return f"invalid HTTP answer: {' '.join(str(cause).split())}"[:MAX_ERROR_CHARS]
    if isinstance(cause, ClosedByReceiver):
        return str(cause)
    if isinstance(exc, httpx.TimeoutException) or isinstance(cause, asyncio.TimeoutError):
        return "timed out"
    return _describe(cause if cause is not None else exc)


def _connect_failure(error: OSError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the receiver's TLS certificate is not trusted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    return os.strerror(error.errno).lower() if error.errno else str(error)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
