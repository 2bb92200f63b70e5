"""uvicorn's HTTP protocol with a deadline per request: a client has ``RELAY_REQUEST_TIMEOUT`` seconds from its
connection (or from the first byte of its next request) to send the whole request, headers and body.

uvicorn bounds only the idle time between requests: a connection that sends half its headers, or a body a byte at
a time, would hold its slot forever. Past the deadline the connection is closed, whatever the app is doing.
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings


@functools.cache
def _request_timeout_s() -> float:
    # uvicorn builds a protocol per connection, in each of its worker processes, from the environment.
    return Settings.from_env().request_timeout_s


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request must come in time too, not just those after it

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._request_timer is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
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
