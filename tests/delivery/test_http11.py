"""The webhook client's HTTP/1.1 transport against real receivers on 127.0.0.1: keep-alive, the connection cap,
https, the address guard on every new connection, and what goes on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvloop

from delivery.errors import ForbiddenAddress
from delivery.http11 import Http11Transport, _request_bytes
from delivery.policy import AttemptResult
from delivery.signing import generate_secret
from delivery.webhook import WebhookSender
from tests.conftest import CI

BODY = b'{"id":"evt_1","type":"task.completed"}'
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

Handler = Callable[["Peer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Peer:
    """What a receiver saw: connections (each a list of the request heads it carried) and how many were open."""

    port: int = 0
    connections: list[list[bytes]] = field(default_factory=list)
    open_now: int = 0
    peak_open: int = 0

    async def read_request(self, reader: asyncio.StreamReader, heads: list[bytes]) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        heads.append(head)
        return head


@asynccontextmanager
async def receiver(handle: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Peer]:
    """A receiver on 127.0.0.1 that answers as ``handle`` says, counting its connections."""
    peer = Peer()
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        peer.connections.append([])
        peer.open_now += 1
        peer.peak_open = max(peer.peak_open, peer.open_now)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await handle(peer, reader, writer)
        finally:
            peer.open_now -= 1
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def answer_each(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on the connection with 200, keeping it open."""
    heads = peer.connections[-1]
    while True:
        await peer.read_request(reader, heads)
        writer.write(OK)
        await writer.drain()


def client(**options: object) -> httpx.AsyncClient:
    transport = Http11Transport(allow_private=True, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2.0), follow_redirects=False)


async def send(http: httpx.AsyncClient, url: str, *, allow_private: bool = True) -> AttemptResult:
    sender = WebhookSender(client=http, allow_private=allow_private, user_agent="relay-test")
    return await asyncio.wait_for(sender.send(url, "evt_1", BODY, [generate_secret()]), 10)


def requests(peer: Peer) -> int:
    return sum(len(heads) for heads in peer.connections)


async def test_two_webhooks_go_on_one_kept_connection() -> None:
    async with client() as http, receiver(answer_each) as peer:
        for _ in range(2):
            result = await send(http, f"http://127.0.0.1:{peer.port}/hook")
            assert (result.status_code, result.error) == (200, None)
    assert [len(heads) for heads in peer.connections] == [2]


def test_keep_alive_works_on_uvloop_as_the_worker_runs() -> None:
    async def two_webhooks() -> Peer:
        async with client() as http, receiver(answer_each) as peer:
            for _ in range(2):
                assert (await send(http, f"http://127.0.0.1:{peer.port}/hook")).ok
        return peer

    assert [len(heads) for heads in uvloop.run(two_webhooks()).connections] == [2]


async def test_a_connection_the_receiver_closed_while_idle_is_not_used_again() -> None:
    async def answer_then_close(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader, peer.connections[-1])
        writer.write(OK)  # no "connection: close": the receiver drops it later, as an idle timeout would
        await writer.drain()
        await asyncio.sleep(0.05)

    async with client() as http, receiver(answer_then_close) as peer:
        for _ in range(2):
            assert (await send(http, f"http://127.0.0.1:{peer.port}/hook")).ok
            await asyncio.sleep(0.2)
    assert [len(heads) for heads in peer.connections] == [1, 1]  # each webhook once, on a connection of its own


async def test_a_kept_connection_that_dies_before_answering_is_retried_once_on_a_new_one() -> None:
    # The receiver closes a kept connection just as the next request goes out on it: that request was not taken.
    async def first_request_only(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads = peer.connections[-1]
        await peer.read_request(reader, heads)
        writer.write(OK)
        await writer.drain()
        await peer.read_request(reader, heads)  # and hang up without a word

    async with client() as http, receiver(first_request_only) as peer:
        for _ in range(2):
            result = await send(http, f"http://127.0.0.1:{peer.port}/hook")
            assert (result.status_code, result.error) == (200, None)
    assert [len(heads) for heads in peer.connections] == [2, 1]


async def test_a_new_connection_that_dies_before_answering_is_not_retried() -> None:
    async def hang_up(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader, peer.connections[-1])

    async with client() as http, receiver(hang_up) as peer:
        result = await send(http, f"http://127.0.0.1:{peer.port}/hook")
    assert result.error == "the receiver closed the connection without answering"
    assert requests(peer) == 1


async def test_an_idle_connection_is_closed_after_the_keep_alive_expiry() -> None:
    async with client(keepalive_expiry_s=0.1) as http, receiver(answer_each) as peer:
        assert (await send(http, f"http://127.0.0.1:{peer.port}/hook")).ok
        await asyncio.sleep(0.3)
        assert peer.open_now == 0  # closed by the sender, without waiting for a next webhook
        assert (await send(http, f"http://127.0.0.1:{peer.port}/hook")).ok
    assert [len(heads) for heads in peer.connections] == [1, 1]


def answer_after(delay_s: float) -> Handler:
    """A peer's handler that answers each request on its connection ``delay_s`` after reading it."""

    async def answer(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads = peer.connections[-1]
        while True:
            await peer.read_request(reader, heads)
            await asyncio.sleep(delay_s)
            writer.write(OK)
            await writer.drain()

    return answer


async def test_never_more_connections_than_the_cap() -> None:
    async with client(max_connections=3) as http, receiver(answer_after(0.2)) as peer:
        url = f"http://127.0.0.1:{peer.port}/hook"
        results = await asyncio.gather(*(send(http, url) for _ in range(4)))
    assert [result.status_code for result in results] == [200] * 4
    assert peer.peak_open == 3
    assert len(peer.connections) == 3  # the fourth webhook waited, then went on a kept one
    assert requests(peer) == 4


async def test_the_wait_for_a_connection_counts_against_the_attempt() -> None:
    # One connection, held by a first request that the receiver answers after a second. A second request with 0.3 s
    # for its whole attempt (and 5 s for the pool alone) must time out waiting, never sent: had the wait not counted,
    # it would have had the freed connection at 1 s, well within the pool's 5 s, and sent on it.
    transport = Http11Transport(allow_private=True, max_connections=1)
    async with (
        httpx.AsyncClient(transport=transport) as http,
        receiver(answer_after(1.0)) as peer,
    ):
        url = f"http://127.0.0.1:{peer.port}/hook"
        first = asyncio.create_task(http.post(url, content=BODY, timeout=httpx.Timeout(5.0)))
        while requests(peer) == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(httpx.TimeoutException):
            await http.post(url, content=BODY, timeout=httpx.Timeout(0.3, pool=5.0))
        assert (await first).status_code == 200
        await asyncio.sleep(0.1)  # a request sent on the freed connection would have arrived by now
    assert requests(peer) == 1
    assert len(peer.connections) == 1


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1.", "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.1", "127.1"],
)
async def test_a_private_literal_is_refused_without_connecting(host: str) -> None:
    # The transport's own check, without the sender's in front of it.
    async with receiver(answer_each) as peer:
        transport = Http11Transport(allow_private=False)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(ForbiddenAddress):
                await http.post(f"http://{host}:{peer.port}/hook", content=BODY)
    assert peer.connections == []


async def test_connects_to_the_address_the_guard_checked_and_names_the_host() -> None:
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1"]

    async with receiver(answer_each) as peer:
        transport = Http11Transport(allow_private=True, resolve=resolve)
        async with httpx.AsyncClient(transport=transport) as http:
            response = await http.post(f"http://hooks.example:{peer.port}/hook?x=1", content=BODY)
    assert response.status_code == 200
    assert asked == [("hooks.example", peer.port)]
    head = peer.connections[0][0]
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: hooks.example:%d\r\n" % peer.port)
    assert b"\r\nContent-Length: %d\r\n" % len(BODY) in head


async def test_a_name_resolving_to_a_private_address_is_refused_and_a_dns_failure_passes_through() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["127.0.0.1"]

    async with receiver(answer_each) as peer:
        transport = Http11Transport(allow_private=False, resolve=resolve)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(ForbiddenAddress):
                await http.post(f"http://private.example:{peer.port}/hook", content=BODY)
            with pytest.raises(socket.gaierror):
                await http.post(f"http://gone.example:{peer.port}/hook", content=BODY)
    assert peer.connections == []


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1/hook", b"127.0.0.1"),
        ("http://127.0.0.1:80/hook", b"127.0.0.1"),
        ("http://127.0.0.1:8080/hook", b"127.0.0.1:8080"),
        ("https://hooks.example/hook", b"hooks.example"),
        ("https://hooks.example:443/hook", b"hooks.example"),
        ("https://hooks.example:8443/hook", b"hooks.example:8443"),
        ("http://b\u00fccher.example/hook", b"xn--bcher-kva.example"),
    ],
)
def test_the_host_header_has_the_port_only_when_it_is_not_the_default(url: str, host: bytes) -> None:
    request = httpx.Request("POST", url, headers={"x-a": "1"}, content=BODY)
    head, _, body = _request_bytes(request, BODY).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hook HTTP/1.1"
    assert lines[1] == b"Host: " + host
    assert [line.lower() for line in lines].count(b"host: " + host.lower()) == 1
    assert lines[-1] == b"Content-Length: %d" % len(BODY)
    assert body == BODY


def test_a_header_holding_a_line_break_is_refused() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/hook", headers={"x-a": "1\r\nx-b: 2"}, content=BODY)
    with pytest.raises(httpx.LocalProtocolError):
        _request_bytes(request, BODY)


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", b"hello"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello", b"hello"),
    ],
    ids=["content-length", "chunked", "after-100-continue", "to-the-close"],
)
async def test_the_answer_body_is_read_however_it_is_framed(answer: bytes, body: bytes) -> None:
    async def answer_once(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader, peer.connections[-1])
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with client() as http, receiver(answer_once) as peer:
        response = await http.post(f"http://127.0.0.1:{peer.port}/hook", content=BODY)
    assert (response.status_code, response.content) == (200, body)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if CI:
            raise RuntimeError("openssl is not on PATH")
        pytest.skip("openssl is not on PATH")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    request = ("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1")
    subject = ("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    subprocess.run(
        [openssl, *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def test_https_to_a_receiver_whose_certificate_is_trusted(certificate: tuple[Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    async with client(ssl_context=trusting) as http, receiver(answer_each, tls=server_context(certificate)) as peer:
        for _ in range(2):
            result = await send(http, f"https://127.0.0.1:{peer.port}/hook")
            assert (result.status_code, result.error) == (200, None)
    assert [len(heads) for heads in peer.connections] == [2]
    assert peer.connections[0][0].startswith(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % peer.port)


async def test_https_refuses_a_certificate_it_does_not_trust(certificate: tuple[Path, Path]) -> None:
    async with client() as http, receiver(answer_each, tls=server_context(certificate)) as peer:
        result = await send(http, f"https://127.0.0.1:{peer.port}/hook")
    assert result.status_code is None
    assert result.error == "cannot connect: the receiver's TLS certificate is not trusted: self-signed certificate"
    assert requests(peer) == 0


async def test_aclose_closes_every_connection() -> None:
    async with receiver(answer_each) as peer:
        http = client()
        url = f"http://127.0.0.1:{peer.port}/hook"
        assert all(result.ok for result in await asyncio.gather(*(send(http, url) for _ in range(3))))
        assert peer.open_now == 3
        await http.aclose()
        for _ in range(50):
            if peer.open_now == 0:
                break
            await asyncio.sleep(0.01)
        assert peer.open_now == 0
