"""uvicorn's HTTP protocol with a deadline per request and a bound on its headers.

A client has ``RELAY_REQUEST_TIMEOUT`` seconds from its connection (or from the first byte of its next request)
to send the whole request, headers and body; uvicorn bounds only the idle time between requests, so a connection
that sends half its headers, or a body a byte at a time, would hold its slot forever. And the headers of one
request may take at most ``MAX_HEADER_BYTES``: httptools sets no limit, and one client streaming a header of
100 MB held the event loop for seconds and the memory for as long. Either way the connection is closed.
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

# The most the request line and headers of one request may take (browsers and proxies send a few KiB).
MAX_HEADER_BYTES = 64 * 1024
_TOO_LARGE_BODY = b'{"status_code":431,"detail":"the request headers are larger than 64 KiB"}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n\r\n" + _TOO_LARGE_BODY
)


@functools.cache
def _request_timeout_s() -> float:
    # uvicorn builds a protocol per connection, in each of its worker processes, from the environment.
    return Settings.from_env().request_timeout_s


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _request_timer: asyncio.TimerHandle | None = None
    _in_headers = True  # reading a request line and headers (a new connection starts there)
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        self._in_headers = True
        if self._request_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers, self._header_bytes = True, 0  # what comes next on this connection is the next request
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # a WebSocket has its own heartbeat and idle limit
        super().handle_websocket_upgrade()

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
