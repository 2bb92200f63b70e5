"""uvicorn's HTTP protocol with a deadline per request and a bound on its headers.

A client has ``RELAY_REQUEST_TIMEOUT`` seconds from its connection (or from the first byte of its next request)
to send the whole request, headers and body; uvicorn bounds only the idle time between requests, so a connection
that sends half its headers, or a body a byte at a time, would hold its slot forever. And the headers of one
request may take at most ``MAX_HEADER_BYTES``: httptools sets no limit, and one client streaming a header of
100 MB held the event loop for seconds and the memory for as long. Either way the connection is closed.

A long response (a Server-Sent Events stream) gets the connection's :class:`ConnectionControl` in its scope
(:func:`connection_control`): it can cut a client that stopped reading, and it hears of the
server's shutdown at once (uvicorn would otherwise wait out its graceful timeout for the response to end).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

# The most the request line and headers of one request may take (browsers and proxies send a few KiB).
MAX_HEADER_BYTES = 64 * 1024
_TOO_LARGE_BODY = b'{"status_code":431,"detail":"the request headers are larger than 64 KiB"}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n\r\n" + _TOO_LARGE_BODY
)


log = logging.getLogger("relay.api")

# The key of the connection's control in a request's scope["extensions"].
CONTROL_EXTENSION = "relay.connection"


class ConnectionControl:
    """What a long response may do with its connection: cut it, and learn that the server is stopping."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._on_shutdown: list[Callable[[], None]] = []

    def abort(self) -> None:
        """Close at once, dropping what waits in the write buffer (the client stopped reading it)."""
        self._transport.abort()

    def on_shutdown(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the server begins to shut down; returns what unregisters it."""
        self._on_shutdown.append(callback)
        return lambda: self._on_shutdown.remove(callback) if callback in self._on_shutdown else None

    def shutdown(self) -> None:
        callbacks, self._on_shutdown = self._on_shutdown, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a shutdown callback failed")


def connection_control(scope: Mapping[str, Any]) -> ConnectionControl | None:
    """The control of the connection that carries a request, when Relay's protocol serves it."""
    extension = (scope.get("extensions") or {}).get(CONTROL_EXTENSION) or {}
    control = extension.get("control")
    return control if isinstance(control, ConnectionControl) else None


@functools.cache
def _request_timeout_s() -> float:
    # uvicorn builds a protocol per connection, in each of its worker processes, from the environment.
    return Settings.from_env().request_timeout_s


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _request_timer: asyncio.TimerHandle | None = None
    _in_headers = True  # reading a request line and headers (a new connection starts there)
    _header_bytes = 0
    _control: ConnectionControl

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._control = ConnectionControl(transport)
        self._arm()  # the first request must come in time too, not just those after it

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Counted until the headers are complete (a chunk that completes them may carry body bytes too).
        if self._in_headers and self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("extensions", {})[CONTROL_EXTENSION] = {"control": self._control}
        self._in_headers = True
        if self._request_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not isinstance(cycle.transport, _HeadWithBody):
            cycle.transport = _HeadWithBody(cycle.transport, self.loop)

    def on_response_complete(self) -> None:
        cycle = getattr(self, "cycle", None)
        if cycle is not None and isinstance(cycle.transport, _HeadWithBody):
            cycle.transport.flush()  # before the connection is closed or the next response begins
        super().on_response_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers, self._header_bytes = True, 0  # what comes next on this connection is the next request
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # a WebSocket has its own heartbeat and idle limit
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        self._control.shutdown()  # a stream ends itself (its client reconnects elsewhere or later)
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._request_timer = self.loop.call_later(_request_timeout_s(), self._timed_out)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _timed_out(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class _HeadWithBody:
    """A response's transport that sends its status line and headers with the first body bytes, in one write.

    uvicorn writes a response's head and its body separately: two sends, two segments on the wire and two
    wake-ups of the client, for a response that fits in one. The head is held until the body's first write,
    or at the latest until the end of the event loop's turn (a stream whose first event comes later still
    gets its headers at once).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None and not data.startswith(b"HTTP/"):
            self._transport.write(data)
            return
        if self._held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._transport.write(held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
