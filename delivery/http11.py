"""A lean HTTP/1.1 transport for httpx, on asyncio Protocols: the webhook client's HTTP stack.

httpx is the API the webhook sender speaks (and what respx mocks in tests); this transport moves the bytes. It
does only what a webhook needs: one request written whole (bodies are bytes, so no chunked upload), an answer
parsed by httptools with bounds, a pool of keep-alive connections, and no redirects, proxies, cookies or
decompression. A general client's per-request machinery is what it leaves out: with aiohttp underneath, aiohttp and
httpx were about 28 % of a worker's CPU (py-spy), some 270 µs per webhook, and aiohttp's per-request setup
(ClientRequest, timers, tracing, middlewares, a write task) the largest part. Here a kept connection costs a
lookup in the pool, one write, the parser's callbacks and one timer per request.
``python -m scripts.benchmark.webhooks.sender`` measures the client's CPU per webhook with either transport.

Every new connection goes to an address the address guard checked (:func:`delivery.address_guard.resolve_checked`,
IP literals in every spelling included), so there is no second lookup to rebind; a kept connection is reused only
for the (scheme, host, port) it was checked for. The guard's refusal and a DNS failure pass through unchanged
(``ForbiddenAddress``, ``OSError``); everything else comes out as one of httpx's exceptions, its cause saying
what happened (an ``OSError`` of the connect, :class:`InvalidAnswer` or :class:`ClosedByReceiver`).

An attempt as a whole ends within the read timeout (RELAY_WEBHOOK_TIMEOUT, seconds per attempt), whatever the
receiver does: the wait for a free connection, the connect and the exchange all count against it, and the pool
and connect timeouts bound their own steps as well. No timer runs per read: the attempt's is the tighter bound.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from typing import cast

import httptools
import httpx

from delivery.address_guard import Resolve, literal_ip, resolve_checked
from delivery.errors import ConfigError

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY_S",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_RESPONSE_BYTES",
    "ClosedByReceiver",
    "Http11Transport",
    "InvalidAnswer",
]

# Connections open at once, idle ones included, across all receivers; past it a request waits for one.
DEFAULT_MAX_CONNECTIONS = 256
# An idle keep-alive connection is closed after this long (receivers commonly drop theirs after 5 to 75 s).
DEFAULT_KEEPALIVE_EXPIRY_S = 15.0
# A receiver's answer body is read up to this much (so that its connection can be kept) and not a byte more.
MAX_RESPONSE_BYTES = 64 * 1024
# An answer's status line and headers: at most this many bytes and header lines.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Request headers this transport writes itself.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})

Origin = tuple[str, str, int]


class InvalidAnswer(Exception):
    """The receiver's answer is not HTTP/1.1 this transport accepts (the message says why)."""


class ClosedByReceiver(Exception):
    """The receiver closed the connection, or reset it, before its answer was complete."""


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over a pool of guarded keep-alive connections; see the module docstring."""

    def __init__(
        self,
        *,
        allow_private: bool,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        resolve: Resolve | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Build the transport; it connects nothing until its first request.

        Args:
            allow_private: Let private addresses through (development and tests only).
            max_connections: Most connections open at once, idle ones included.
            keepalive_expiry_s: How long an idle connection is kept.
            resolve: ``async (host, port) -> addresses``; defaults to the system resolver.
            ssl_context: For https; defaults to ``ssl.create_default_context()`` (certificates verified).

        Raises:
            ConfigError: ``max_connections`` or ``keepalive_expiry_s`` is not positive.
        """
        if max_connections < 1:
            raise ConfigError(f"max_connections must be 1 or more, not {max_connections}")
        if keepalive_expiry_s <= 0:
            raise ConfigError(f"keepalive_expiry_s must be positive, not {keepalive_expiry_s}")
        self._allow_private = allow_private
        self._resolve = resolve
        self._ssl = ssl_context
        self._pool = _Pool(max_connections=max_connections, keepalive_expiry_s=keepalive_expiry_s)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request.url)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout") or {}
        loop = asyncio.get_running_loop()
        attempt_s = timeouts.get("read")
        deadline = None if attempt_s is None else loop.time() + attempt_s
        message = _request_bytes(request, await request.aread())
        fresh = False
        while True:
            connection = await self._checkout(request, origin, timeouts, deadline, fresh=fresh)
            try:
                return await connection.exchange(request, message, deadline)
            except _Unused as unused:
                if fresh:  # not raised for a new connection; never a second retry
                    raise unused.error from unused.error.__cause__
                fresh = True  # the receiver had closed the kept connection: once more, on a new one

    async def _checkout(
        self,
        request: httpx.Request,
        origin: Origin,
        timeouts: Mapping[str, float | None],
        deadline: float | None,
        *,
        fresh: bool,
    ) -> _Connection:
        """A kept connection to ``origin`` (unless ``fresh``), else a new one."""
        connection = await self._pool.acquire(request, origin, timeouts.get("pool"), deadline, fresh=fresh)
        if connection is not None:
            return connection
        made: list[_Connection] = []
        try:
            return await self._connect(request, origin, _sooner(deadline, timeouts.get("connect")), made)
        except BaseException:
            self._pool.unreserve(made)
            raise

    async def _connect(
        self, request: httpx.Request, origin: Origin, deadline: float | None, made: list[_Connection]
    ) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()  # built once, when first needed: it loads the CA store
            context = self._ssl
        ip = literal_ip(host)
        server_hostname = (str(ip) if ip is not None else host) if context is not None else None
        loop = asyncio.get_running_loop()

        def build() -> _Connection:
            made.append(_Connection(self._pool, origin, loop))
            return made[-1]

        failure: OSError | None = None
        try:
            async with asyncio.timeout_at(deadline):
                # The guard's refusal (ForbiddenAddress) and a DNS failure (OSError) leave here as they are.
                addresses = await resolve_checked(host, port, allow_private=self._allow_private, resolve=self._resolve)
                for address in addresses:  # in the resolver's order, as checked
                    try:
                        _, connection = await loop.create_connection(
                            build,
                            host=address,
                            port=port,
                            ssl=context,
                            server_hostname=server_hostname,
                        )
                    except OSError as exc:  # ssl.SSLError included
                        failure = exc
                        continue
                    return connection
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("timed out", request=request) from exc
        assert failure is not None  # resolve_checked returns at least one address
        raise httpx.ConnectError(str(failure) or type(failure).__name__, request=request) from failure

    async def aclose(self) -> None:
        await self._pool.close()


class _Unused(Exception):
    """A kept connection failed before a byte of answer: the request may go again on a new one."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _Pool:
    """Idle connections by origin, and the count of open ones under a process-wide cap.

    A connection counts from the moment its connect starts (:meth:`acquire`) until it is closed. Waiters are woken
    when a connection closes or goes idle, and look again: take an idle one of their origin, or close the oldest
    idle one (of any origin) to open their own.
    """

    def __init__(self, *, max_connections: int, keepalive_expiry_s: float) -> None:
        self._max = max_connections
        self._expiry_s = keepalive_expiry_s
        self._open = 0
        self._connections: set[_Connection] = set()
        self._idle: dict[Origin, dict[_Connection, None]] = {}
        self._idle_order: dict[_Connection, None] = {}  # oldest first, for expiry and eviction
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None

    def take_idle(self, origin: Origin) -> _Connection | None:
        """The most recently kept idle connection to ``origin`` that is still usable, if any."""
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection, _ = idle.popitem()  # the newest: the least likely to have been closed by the receiver
            del self._idle_order[connection]
            if not idle:
                del self._idle[origin]
            if connection.usable(now, self._expiry_s):
                return connection
            connection.abort()
        return None

    async def acquire(
        self, request: httpx.Request, origin: Origin, pool_s: float | None, deadline: float | None, *, fresh: bool
    ) -> _Connection | None:
        """A kept connection to ``origin`` (unless ``fresh``); else None, with room counted for a new one.

        At the cap, the oldest idle connection (of any origin) is closed to make room; with none idle, this waits
        (within ``pool_s`` and ``deadline``) for a connection to close or to be kept.
        """
        wait_until = None
        while True:
            connection = None if fresh else self.take_idle(origin)
            if connection is not None:
                return connection
            if self._open < self._max:
                self._open += 1
                return None
            if self._idle_order:
                oldest = next(iter(self._idle_order))
                self._discard(oldest)
                oldest.abort()
                continue
            wait_until = wait_until or _sooner(deadline, pool_s)
            await self._wait(request, wait_until)

    def unreserve(self, made: list[_Connection]) -> None:
        """Give back the count :meth:`acquire` took for a connect that failed (``made``: what it built)."""
        for connection in made:
            if connection in self._connections:  # opened, then the connect failed: not counted twice
                self._connections.discard(connection)
                connection.abort()
        self._open -= 1
        self._wake_one()

    async def _wait(self, request: httpx.Request, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, but ended before its turn: pass the wake-up on
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("timed out", request=request) from exc
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def keep(self, connection: _Connection, now: float) -> None:
        """Put a connection whose exchange ended cleanly back among the idle ones."""
        connection.idle_since = now
        self._idle.setdefault(connection.origin, {})[connection] = None
        self._idle_order[connection] = None
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_at(now + self._expiry_s, self._drop_expired)
        self._wake_one()

    def closed(self, connection: _Connection) -> None:
        """A connection is gone (whoever closed it): forget it and give its room back."""
        if connection in self._connections:
            self._discard(connection)

    def _discard(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._forget_idle(connection)
        self._open -= 1
        self._wake_one()

    def _forget_idle(self, connection: _Connection) -> None:
        if connection in self._idle_order:
            del self._idle_order[connection]
            idle = self._idle[connection.origin]
            del idle[connection]
            if not idle:
                del self._idle[connection.origin]

    def _drop_expired(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self._idle_order):
            if connection.usable(now, self._expiry_s):
                # The oldest still usable: look again when it expires.
                self._sweep = loop.call_at(connection.idle_since + self._expiry_s, self._drop_expired)
                return
            self._forget_idle(connection)
            connection.abort()

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._connections):
            connection.abort()
        await asyncio.sleep(0)  # the transports close their sockets on the loop's next turn


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its answer (httptools calls the ``on_*`` methods)."""

    def __init__(self, pool: _Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._pool = pool
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._lost = False
        self._used = False
        # The exchange under way, if any:
        self._request: httpx.Request | None = None
        self._answer: asyncio.Future[bool] | None = None  # its result: may the connection be kept
        self._got_bytes = False
        self._head_bytes = 0
        self._head_done = False
        self._keep_alive = False
        self._interim = False
        self._complete = False
        self._more = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._chunked = False
        self._body: list[bytes] = []
        self._body_bytes = 0

    async def exchange(self, request: httpx.Request, message: bytes, deadline: float | None) -> httpx.Response:
        """Write ``message`` (the request, whole) and read its answer, by ``deadline`` at the latest.

        Raises:
            _Unused: A kept connection failed before a byte of answer (the receiver had closed it).
            httpx.TransportError: Anything else that went wrong.
        """
        reused, self._used = self._used, True
        answer = self._start(request)
        timer = None if deadline is None else self._loop.call_at(deadline, self._time_out)
        try:
            if self._lost or self._transport is None or self._transport.is_closing():
                self._fail(httpx.ReadError, ClosedByReceiver("the receiver closed the connection without answering"))
            else:
                self._transport.write(message)
            keep = await answer
        except httpx.TransportError as error:
            self.abort()
            if reused and not self._got_bytes and not isinstance(error, httpx.TimeoutException):
                raise _Unused(error) from None
            raise
        except BaseException:
            self.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._answer = self._request = None  # an idle connection holds on to no request
        response = self._response(request)
        self._body = []
        if keep and self._may_keep():
            self._pool.keep(self, self._loop.time())
        else:
            self.abort()
        return response

    def _start(self, request: httpx.Request) -> asyncio.Future[bool]:
        self._request = request
        self._answer = self._loop.create_future()
        self._got_bytes = self._head_done = self._keep_alive = self._interim = False
        self._complete = self._more = self._chunked = False
        self._head_bytes = self._body_bytes = 0
        self._headers, self._body, self._length = [], [], None
        return self._answer

    def _response(self, request: httpx.Request) -> httpx.Response:
        too_long = self._length is not None and self._length > MAX_RESPONSE_BYTES
        body = b"" if too_long else b"".join(self._body)[:MAX_RESPONSE_BYTES]
        return httpx.Response(
            status_code=self._parser.get_status_code(),
            headers=self._headers,
            # A stream, not content=: httpx decodes content at once, as its Content-Encoding says, and a gzip body
            # of 64 KiB can hold 64 MiB (one that fails to decode would turn a 2xx into an error).
            stream=httpx.ByteStream(body),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": self._reason},
        )

    def _may_keep(self) -> bool:
        """Whether both sides allow another request on this connection, and this one's bytes all went out."""
        transport = self._transport
        return (
            self._keep_alive
            and not self._more
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def usable(self, now: float, expiry_s: float) -> bool:
        """Whether this idle connection may carry another request."""
        transport = self._transport
        return (
            not self._lost and transport is not None and not transport.is_closing() and now - self.idle_since < expiry_s
        )

    def abort(self) -> None:
        """Close at once, dropping whatever is unsent or unread (no draining)."""
        if self._transport is not None:
            self._transport.abort()

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            self.abort()  # bytes nobody asked for: this connection cannot carry another request
            return
        self._got_bytes = True
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(keep=False)  # a 101: the answer is its head; the connection is no longer HTTP
            return
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError, InvalidAnswer(self._parser_reason(exc)))
            return
        self._after_feed()

    def _after_feed(self) -> None:
        if len(self._headers) > MAX_HEADERS:
            self._fail(httpx.RemoteProtocolError, InvalidAnswer(f"Too many headers (more than {MAX_HEADERS})"))
        elif self._complete:
            self._finish(keep=True)
        elif not self._head_done:
            if self._head_bytes > MAX_HEADER_BYTES:
                self._fail(
                    httpx.RemoteProtocolError, InvalidAnswer(f"Got more than {MAX_HEADER_BYTES} bytes of headers")
                )
        elif self._body_bytes > MAX_RESPONSE_BYTES or (self._length or 0) > MAX_RESPONSE_BYTES:
            self._finish(keep=False)  # not read on: the connection is closed instead of drained
        elif self._length is None and not self._chunked:
            # A body that ends with the connection: taken as far as it came, since nothing bounds when the receiver
            # closes; the connection goes anyway.
            self._finish(keep=False)

    def _parser_reason(self, exc: httptools.HttpParserError) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._head_done:
            return f"Bad body: {reason}"
        return f"Bad header: {reason}" if self._parser.get_status_code() else f"Bad status line: {reason}"

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost says what that meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._pool.closed(self)
        answer = self._answer
        if answer is None or answer.done():
            return
        error = httpx.RemoteProtocolError if exc is None else httpx.ReadError
        if self._got_bytes:
            cause = ClosedByReceiver("the receiver closed the connection in the middle of its answer")
        else:
            cause = ClosedByReceiver("the receiver closed the connection without answering")
        cause.__cause__ = exc
        self._fail(error, cause)

    def _time_out(self) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            unsent = self._transport is not None and self._transport.get_write_buffer_size() > 0
            error = (httpx.WriteTimeout if unsent else httpx.ReadTimeout)("timed out", request=self._request)
            answer.set_exception(error)
        self.abort()

    def _finish(self, *, keep: bool) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(keep)

    def _fail(self, error: type[httpx.TransportError], cause: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            exc = error(str(cause), request=self._request)
            exc.__cause__ = cause
            self._answer.set_exception(exc)

    # httptools' side

    def on_message_begin(self) -> None:
        if self._complete:
            self._more = True  # bytes past the answer: the connection is not kept

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done or len(self._headers) > MAX_HEADERS:
            return  # trailers are not kept; past the bound the answer fails
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._length = int(value)  # llhttp has checked it is digits
        elif lowered == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # a 100 Continue or 103 Early Hints: the answer comes after it
            self._headers, self._length, self._chunked = [], None, False
            return
        self._head_done = True
        # Asked here: once the message is complete, llhttp has reset what this reads.
        self._keep_alive = self._parser.get_http_version() == "1.1" and self._parser.should_keep_alive()
        if status in (204, 304):
            self._length = 0

    def on_body(self, body: bytes) -> None:
        if self._body_bytes <= MAX_RESPONSE_BYTES:
            self._body.append(body)
        self._body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(f"only http:// and https:// URLs are sent, not {scheme or 'none'}")
    if not url.raw_host:
        raise httpx.UnsupportedProtocol("the URL has no host")
    return scheme, url.raw_host.decode("ascii"), url.port or default_port


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request as it goes on the wire: request line, Host, the request's headers, Content-Length, body."""
    url = request.url
    # netloc: the IDNA host, bracketed if IPv6, with the port unless it is the scheme's default.
    parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\nHost: ", url.netloc, b"\r\n"]
    for name, value in request.headers.raw:
        if name.lower() not in _OWN_HEADERS:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
    head = b"".join(parts)
    lines = (len(parts) - 7) // 4 + 4  # request line, Host, each header, Content-Length, the blank line
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise httpx.LocalProtocolError("a header name or value holds a line break", request=request)
    return head + body


def _sooner(deadline: float | None, timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return deadline
    other = asyncio.get_running_loop().time() + timeout_s
    return other if deadline is None else min(deadline, other)
