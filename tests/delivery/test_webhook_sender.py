"""The webhook sender through its real client (``create_client()``: our HTTP/1.1 transport, the guarded resolver)
against receivers on 127.0.0.1, hostile ones too: exact body, Standard Webhooks headers, statuses, Retry-After,
redirects, timeouts, and what it reports back.

Two tests put ``httpx.MockTransport`` in place of the transport, and say so: they check only how the sender reports
an httpx exception it is handed, for exceptions a receiver on loopback cannot be made to cause on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from delivery.policy import AttemptResult
from delivery.signing import generate_secret
from delivery.webhook import WebhookSender, create_client

BODY = json.dumps({"id": "evt_1", "type": "task.completed", "data": {"result": "é ✓"}}, ensure_ascii=False).encode()
MSG_ID = "evt_1"
USER_AGENT = "relay/9.9.9"


@dataclass
class Seen:
    """One request as the receiver read it."""

    method: str
    path_qs: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Hooks:
    """A real HTTP receiver (aiohttp) on 127.0.0.1 in the test's own loop. ``answer(path, status, headers, delay_s)``
    scripts the answer to a path (default 200 at once); ``seen`` holds every request that reached it."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    answers: dict[str, tuple[int, dict[str, str], float]] = field(default_factory=dict)

    def url(self, path_qs: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path_qs}"

    def answer(self, path: str, status: int, headers: dict[str, str] | None = None, *, delay_s: float = 0.0) -> str:
        self.answers[path] = (status, headers or {}, delay_s)
        return self.url(path)


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    found = Hooks()

    async def handle(request: web.Request) -> web.Response:
        found.seen.append(
            Seen(
                request.method,
                request.path_qs,
                {k.lower(): v for k, v in request.headers.items()},
                await request.read(),
            )
        )
        status, headers, delay_s = found.answers.get(request.path, (200, {}, 0.0))
        if delay_s:
            await asyncio.sleep(delay_s)
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = runner.addresses[0][1]
    try:
        yield found
    finally:
        await runner.cleanup()


def sender(client: httpx.AsyncClient, *, allow_private: bool = True) -> WebhookSender:
    return WebhookSender(client=client, allow_private=allow_private, user_agent=USER_AGENT)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    http = create_client(timeout_s=2, allow_private=True)
    yield http
    await http.aclose()


async def test_posts_the_exact_body_signed_with_standard_webhooks_headers(
    hooks: Hooks, client: httpx.AsyncClient
) -> None:
    hooks.answer("/hooks/relay", 204)
    url = hooks.url("/hooks/relay?x=1")
    secret = generate_secret()
    before = int(time.time())

    result = await sender(client).send(url, MSG_ID, BODY, [secret])

    assert result.status_code == 204
    assert result.ok
    assert result.error is None
    assert result.duration_ms >= 0
    (request,) = hooks.seen
    assert request.method == "POST"
    assert request.path_qs == "/hooks/relay?x=1"
    assert request.body == BODY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(BODY))
    assert request.headers["host"] == f"127.0.0.1:{hooks.port}"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["webhook-id"] == MSG_ID
    assert before <= int(request.headers["webhook-timestamp"]) <= int(time.time())
    assert "cookie" not in request.headers
    assert Webhook(secret).verify(request.body, request.headers) == json.loads(BODY)


async def test_two_live_secrets_give_two_signatures_each_verifying(hooks: Hooks, client: httpx.AsyncClient) -> None:
    old, new = generate_secret(), generate_secret()

    await sender(client).send(hooks.url(), MSG_ID, BODY, [new, old])

    (request,) = hooks.seen
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(generate_secret()).verify(request.body, request.headers)


@pytest.mark.parametrize("status", [400, 404, 410, 500])
async def test_reports_a_non_2xx_status_as_an_error(hooks: Hooks, client: httpx.AsyncClient, status: int) -> None:
    url = hooks.answer("/hook", status)
    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    assert result.status_code == status
    assert not result.ok
    assert result.error == f"HTTP {status}"
    assert result.retry_after_s is None
    assert not result.forbidden
    assert len(hooks.seen) == 1  # reported, not sent again: retries are the engine's


async def test_measures_how_long_the_receiver_took(hooks: Hooks, client: httpx.AsyncClient) -> None:
    url = hooks.answer("/hook", 200, delay_s=0.15)
    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    assert result.status_code == 200
    assert result.duration_ms >= 150


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.PoolTimeout])
async def test_the_sender_reports_any_httpx_timeout_as_timed_out(error: type[Exception]) -> None:
    """Only the sender's mapping of httpx's timeout exceptions (a MockTransport raises them): that the real transport
    times out a silent receiver is tested below (test_a_receiver_that_never_answers_times_out), and that the wait for
    a connection counts against the attempt in test_http11."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error("timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as http:
        result = await sender(http).send("http://127.0.0.1:9/hook", MSG_ID, BODY, [generate_secret()])
    assert result.status_code is None
    assert result.error == "timed out"
    assert not result.forbidden


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("connection refused"), httpx.RemoteProtocolError("bad reply"), httpx.ReadError("reset")],
)
async def test_the_sender_reports_any_httpx_connection_error_with_its_message(error: Exception) -> None:
    """Only the sender's mapping of httpx's connection errors it is handed (a MockTransport raises them); the real
    transport's refused, dropped and garbled connections are tested below against receivers on 127.0.0.1."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as http:
        result = await sender(http).send("http://127.0.0.1:9/hook", MSG_ID, BODY, [generate_secret()])
    assert result.status_code is None
    assert result.error is not None
    assert str(error) in result.error
    assert not result.forbidden


@asynccontextmanager
async def loopback_server(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A raw TCP server on 127.0.0.1 that misbehaves as ``on_connect`` says; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await on_connect(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_reported_as_such(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await sender(client).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
    assert result.status_code is None
    assert result.error == "cannot connect: connection refused"


async def test_a_receiver_that_hangs_up_without_answering_is_an_error(client: httpx.AsyncClient) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with loopback_server(hang_up) as port:
        result = await sender(client).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
    assert result.status_code is None
    assert result.error is not None
    assert "closed the connection" in result.error


async def test_a_receiver_that_never_answers_times_out() -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    http = create_client(timeout_s=0.3, allow_private=True)
    try:
        async with loopback_server(say_nothing) as port:
            result = await sender(http).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
    finally:
        await http.aclose()
    assert result.status_code is None
    assert result.error == "timed out"
    assert 300 <= result.duration_ms < 3000


@pytest.mark.parametrize("status", [429, 503])
async def test_parses_retry_after_seconds(hooks: Hooks, client: httpx.AsyncClient, status: int) -> None:
    url = hooks.answer("/hook", status, {"Retry-After": "120"})
    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    assert result.status_code == status
    assert result.retry_after_s == 120.0


async def test_parses_retry_after_as_an_http_date(hooks: Hooks, client: httpx.AsyncClient) -> None:
    from email.utils import formatdate

    url = hooks.answer("/hook", 429, {"Retry-After": formatdate(time.time() + 600, usegmt=True)})
    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    assert result.retry_after_s is not None
    assert 590 <= result.retry_after_s <= 601


async def test_an_unreadable_retry_after_is_ignored_not_raised(client: httpx.AsyncClient) -> None:
    async def answer_superscript_two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await _answer(reader, writer, "HTTP/1.1 429 Too Many Requests\r\nretry-after: \u00b2\r\n".encode(), b"")
            await _hold(reader)

    async with loopback_server(answer_superscript_two) as port:
        result = await _send_to(client, port)
    assert result.status_code == 429
    assert result.retry_after_s is None


async def test_retry_after_on_other_statuses_is_not_read(hooks: Hooks, client: httpx.AsyncClient) -> None:
    url = hooks.answer("/hook", 500, {"Retry-After": "120"})
    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    assert result.status_code == 500
    assert result.retry_after_s is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_does_not_follow_redirects(hooks: Hooks, client: httpx.AsyncClient, status: int) -> None:
    url = hooks.answer("/hook", status, {"Location": hooks.url("/elsewhere")})

    result = await sender(client).send(url, MSG_ID, BODY, [generate_secret()])
    await asyncio.sleep(0.1)  # time for a followed redirect to arrive, had one been followed

    assert (result.status_code, result.error) == (status, f"HTTP {status}")
    assert not result.ok
    assert [r.path_qs for r in hooks.seen] == ["/hook"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://2130706433:{port}/hook",
        "http://0x7f000001:{port}/hook",
        "http://127.1:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://0.0.0.0:{port}/hook",
    ],
)
async def test_refuses_a_private_literal_without_sending_anything(hooks: Hooks, url: str) -> None:
    # The receiver listens where each of these spellings leads (on 127.0.0.1): had one gone out, it would be seen.
    http = create_client(timeout_s=2, allow_private=False)
    try:
        result = await sender(http, allow_private=False).send(
            url.format(port=hooks.port), MSG_ID, BODY, [generate_secret()]
        )
    finally:
        await http.aclose()
    assert result.forbidden
    assert result.status_code is None
    assert result.error is not None
    assert "private, loopback" in result.error
    assert hooks.seen == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:{port}/hook", "/relative", "http://"])
async def test_an_invalid_url_is_refused_without_sending_anything(
    hooks: Hooks, client: httpx.AsyncClient, url: str
) -> None:
    result = await sender(client).send(url.format(port=hooks.port), MSG_ID, BODY, [generate_secret()])
    assert result.forbidden
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("invalid URL")
    assert hooks.seen == []


async def _read_request(reader: asyncio.StreamReader, *, body: bool = True) -> bytes:
    """Read one request's head, and its body unless told not to; the request's head."""
    request_head = await reader.readuntil(b"\r\n\r\n")
    if body:
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in request_head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
    return request_head


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bytes:
    """Read one request (headers and body) and answer it with ``head`` and ``body``; the request's head."""
    request_head = await _read_request(reader)
    writer.write(head + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return request_head


async def test_a_cookie_one_receiver_sets_never_goes_out_again(client: httpx.AsyncClient) -> None:
    # One client carries every tenant's webhooks: what one receiver sets must not reach the next request.
    heads: list[bytes] = []

    async def set_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                heads.append(
                    await _answer(reader, writer, b"HTTP/1.1 200 OK\r\nset-cookie: session=tenant-a\r\n", b"ok")
                )
            except asyncio.IncompleteReadError:
                return

    async with loopback_server(set_cookie) as port:
        for _ in range(2):
            result = await sender(client).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
            assert result.ok
    assert len(heads) == 2
    assert not any(b"cookie:" in head.lower() for head in heads)


async def test_a_large_answer_is_not_read_whole_and_the_next_webhook_still_goes(client: httpx.AsyncClient) -> None:
    big = b"x" * (4 * 1024 * 1024)
    connections = 0

    async def answer_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:  # the sender hangs up rather than read 4 MiB: drain() may fail then
                await _answer(reader, writer, b"HTTP/1.1 200 OK\r\n", big)
            except (asyncio.IncompleteReadError, ConnectionError):
                return

    async with loopback_server(answer_big) as port:
        for _ in range(2):
            result = await sender(client).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
            assert result.status_code == 200
    assert connections == 2  # the first connection was not kept: its answer was never read to the end


# Hostile receivers, over the real transport: each attempt ends in time with its status or an error that says what
# happened, and the next webhook on the same client goes out as usual.


# aiohttp warns of a body over 1 MiB sent from bytes (Python ignores a ResourceWarning unless told otherwise).
LARGE_BODY = pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
# More than the socket buffers on both sides take in: the sender's write waits on the receiver's reads.
LARGE_BODY_BYTES = 16 * 1024 * 1024


async def _hold(reader: asyncio.StreamReader) -> None:
    """Keep the connection open until the sender (or the test's end) closes it."""
    await reader.read()


async def assert_the_next_webhook_goes(client: httpx.AsyncClient) -> None:
    async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                await _answer(reader, writer, b"HTTP/1.1 200 OK\r\n", b"ok")
            except (asyncio.IncompleteReadError, ConnectionError):
                return

    async with loopback_server(answer_ok) as port:
        result = await sender(client).send(f"http://127.0.0.1:{port}/hook", MSG_ID, BODY, [generate_secret()])
    assert (result.status_code, result.error) == (200, None)


async def _send_to(client: httpx.AsyncClient, port: int, body: bytes = BODY) -> AttemptResult:
    url = f"http://127.0.0.1:{port}/hook"
    return await asyncio.wait_for(sender(client).send(url, MSG_ID, body, [generate_secret()]), 10)


def _gzip_bomb(decompressed_bytes: int) -> bytes:
    """A gzip body of a few KiB that decompresses to ``decompressed_bytes`` zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(decompressed_bytes // len(block))) + packer.flush()


async def test_a_gzip_answer_is_not_decompressed_so_a_bomb_costs_no_memory(client: httpx.AsyncClient) -> None:
    bomb = _gzip_bomb(32 * 1024 * 1024)
    assert len(bomb) < 64 * 1024  # within what the transport reads of an answer

    async def answer_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n" + b"content-length: %d\r\n\r\n" % len(bomb) + bomb
        )
        await _hold(reader)

    tracemalloc.start()
    try:
        async with loopback_server(answer_bomb) as port:
            result = await _send_to(client, port)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.status_code, result.error) == (200, None)
    assert peak < 8 * 1024 * 1024  # decompressed, the answer would take 32 MiB
    await assert_the_next_webhook_goes(client)


async def test_an_answer_with_a_body_its_encoding_does_not_fit_counts_by_its_status(client: httpx.AsyncClient) -> None:
    # The receiver took the webhook: that its body is not the gzip it says is no reason to send it again.
    async def answer_not_gzip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\nok")
        await _hold(reader)

    async with loopback_server(answer_not_gzip) as port:
        result = await _send_to(client, port)
    assert (result.status_code, result.error) == (200, None)
    await assert_the_next_webhook_goes(client)


async def _trickle_the_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
    while True:  # a byte at a time, each well within the read timeout
        writer.write(b"a")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _read_the_body_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    while await reader.read(1024):
        await asyncio.sleep(0.05)


@LARGE_BODY
@pytest.mark.parametrize(
    ("receiver", "body_bytes"),
    [(_trickle_the_answer, len(BODY)), (_read_the_body_slowly, LARGE_BODY_BYTES)],
    ids=["trickled-answer", "slow-read"],
)
async def test_a_receiver_that_keeps_an_attempt_going_is_cut_off_in_time(
    receiver: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], body_bytes: int
) -> None:
    # Every read and write makes progress, so no per-read timeout fires: the attempt as a whole must end, or one
    # receiver could hold a worker's slot for ever (and past the attempt's lease, when another worker sends again).
    http = create_client(timeout_s=0.5, allow_private=True)
    try:

        async def quietly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await receiver(reader, writer)

        async with loopback_server(quietly) as port:
            result = await _send_to(http, port, body=b"x" * body_bytes)
        assert result.status_code is None
        assert result.error == "timed out"
        assert result.duration_ms < 5000
        await assert_the_next_webhook_goes(http)
    finally:
        await http.aclose()


async def test_an_endless_chunked_answer_is_taken_at_its_status_and_not_read_on(client: httpx.AsyncClient) -> None:
    hung_up = asyncio.Event()

    async def answer_for_ever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"4000\r\n" + b"a" * 0x4000 + b"\r\n")
                await writer.drain()
        except ConnectionError:
            hung_up.set()

    async with loopback_server(answer_for_ever) as port:
        result = await _send_to(client, port)
        await asyncio.wait_for(hung_up.wait(), 10)  # the sender closed the connection rather than read on
    assert (result.status_code, result.error) == (200, None)
    await assert_the_next_webhook_goes(client)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody to the close",
        b"HTTP/1.1 200 OK\r\n\r\na body with no length, on a connection the receiver keeps open",
    ],
    ids=["then-close", "kept-open"],
)
async def test_an_answer_without_a_length_is_taken_at_its_status(client: httpx.AsyncClient, answer: bytes) -> None:
    async def answer_unframed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        if b"close" in answer:
            writer.close()
        else:
            await _hold(reader)

    async with loopback_server(answer_unframed) as port:
        result = await _send_to(client, port)
    assert (result.status_code, result.error) == (200, None)
    await assert_the_next_webhook_goes(client)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "Bad status line"),
        (b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * (1024 * 1024), "Got more than"),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: a\r\n" % i for i in range(10_000)) + b"\r\n", "Too many headers"),
    ],
    ids=["not-http", "endless-header", "too-many-headers"],
)
async def test_an_answer_that_is_not_http_is_an_error_that_says_so(
    client: httpx.AsyncClient, answer: bytes, says: str
) -> None:
    async def answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        with contextlib.suppress(ConnectionError):
            writer.write(answer)
            await writer.drain()
            await _hold(reader)

    async with loopback_server(answer_garbage) as port:
        result = await _send_to(client, port)
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("invalid HTTP answer: ")
    assert says in result.error
    assert "400" not in result.error  # no status came back, and the error must not read as if one had
    await assert_the_next_webhook_goes(client)


@LARGE_BODY
async def test_a_receiver_that_answers_before_reading_a_large_body_is_heard_and_frees_its_connection() -> None:
    async def refuse_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # and not a byte of the body
        writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await _hold(reader)

    http = create_client(timeout_s=2, allow_private=True, max_connections=1)  # the next webhook needs the one
    try:
        async with loopback_server(refuse_early) as port:
            result = await _send_to(http, port, body=b"x" * LARGE_BODY_BYTES)
        assert (result.status_code, result.error) == (413, "HTTP 413")
        await assert_the_next_webhook_goes(http)
    finally:
        await http.aclose()
