"""Relay's HTTP protocol on a real uvicorn, spoken to over a raw socket: a response's head goes out with its body,
and nothing that holds the head back costs a client a byte, an order or a wait (HEAD, 204, pipelining,
``Connection: close``, a stream that starts late, ``Expect: 100-continue``)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvicorn
from litestar import Litestar, Request, Response, get, head, post
from litestar.response import Stream

from service.api.http_protocol import BoundedHttpToolsProtocol

# Long enough that a head held back until the body would be missed, short enough for a failing test.
WAIT_S = 3.0
HELLO = {"hello": "world"}
# A body written in three parts, two of which begin as a status line does.
LOOK_ALIKE = (b"HTTP/1.1 200 OK\r\n", b"not a head\r\n", b"HTTP/1.1 204 the end")


@dataclass
class Served:
    port: int
    first_chunk: asyncio.Event = field(default_factory=asyncio.Event)


def app(served: Served) -> Litestar:
    @get("/json")
    async def hello() -> dict[str, str]:
        return HELLO

    @head("/json")
    async def hello_head() -> Response[None]:
        return Response(content=None, headers={"x-relay": "head"})

    @get("/slow")
    async def slow() -> dict[str, int]:
        await asyncio.sleep(0.05)
        return {"slow": 1}

    @post("/empty", status_code=204)
    async def empty() -> None:
        return None

    @post("/echo")
    async def echo(request: Request) -> bytes:  # type: ignore[type-arg]
        return await request.body()

    @get("/stream")
    async def stream() -> Stream:
        async def events() -> AsyncIterator[bytes]:
            await served.first_chunk.wait()  # the first event comes only when the test says so
            yield b"data: 1\n\n"

        return Stream(events(), media_type="text/event-stream")

    @get("/look-alike")
    async def look_alike() -> Stream:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in LOOK_ALIKE:
                await asyncio.sleep(0)
                yield chunk

        length = str(sum(map(len, LOOK_ALIKE)))
        return Stream(chunks(), media_type="text/plain", headers={"content-length": length})

    return Litestar([hello, hello_head, slow, empty, echo, stream, look_alike])


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A uvicorn on 127.0.0.1 serving a small Litestar app through Relay's protocol."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    served = Served(port=sock.getsockname()[1])
    config = uvicorn.Config(
        app(served), http=BoundedHttpToolsProtocol, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    yield served
    server.should_exit = True
    await asyncio.wait_for(task, WAIT_S)
    sock.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """One keep-alive connection, read one response at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        status_line, *lines = raw.decode().split("\r\n")[:-2]
        assert status_line.startswith("HTTP/1.1 "), raw
        headers = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split(" ")[1]), {name.lower(): value for name, value in headers.items()}

    async def answer(self, *, method: str = "GET") -> Answer:
        status, headers = await self.head()
        if method == "HEAD" or status in (204, 304):
            return Answer(status, headers, b"")
        length = int(headers["content-length"])
        return Answer(status, headers, await asyncio.wait_for(self.reader.readexactly(length), WAIT_S))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def segments_in(self) -> int:
        """TCP segments with data this connection has received (Linux's TCP_INFO ``tcpi_data_segs_in``)."""
        info = self.writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return int(struct.unpack_from("I", info, 152)[0])


@asynccontextmanager
async def connect(served: Served) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: relay.test", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts TCP segments with Linux's TCP_INFO")
async def test_a_json_answer_comes_whole_in_one_segment(served: Served) -> None:
    async with connect(served) as client:
        for _ in range(3):  # and again on the same connection
            before = client.segments_in()
            client.send(request("GET", "/json"))
            answer = await client.answer()
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("application/json")
            assert answer.json() == HELLO
            assert client.segments_in() - before == 1  # head and body in one write (uvicorn alone makes two)


async def test_head_and_204_answers_end_and_the_connection_carries_the_next_request(served: Served) -> None:
    async with connect(served) as client:
        client.send(request("HEAD", "/json"))
        head_answer = await client.answer(method="HEAD")
        client.send(request("POST", "/empty", body=b"{}"))
        no_content = await client.answer()
        client.send(request("GET", "/json"))
        last = await client.answer()

    assert (head_answer.status, head_answer.headers["x-relay"]) == (200, "head")
    assert no_content.status == 204
    assert (last.status, last.json()) == (200, HELLO)


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    async with connect(served) as client:
        client.send(
            request("GET", "/slow")
            + request("HEAD", "/json")
            + request("POST", "/empty", body=b"{}")
            + request("POST", "/echo", body=b"second to last")
            + request("GET", "/json")
        )
        answers = [await client.answer(method=method) for method in ("GET", "HEAD", "POST", "POST", "GET")]

    assert [a.status for a in answers] == [200, 200, 204, 201, 200]
    assert answers[0].json() == {"slow": 1}
    assert answers[1].headers["x-relay"] == "head"
    assert answers[3].body == b"second to last"
    assert answers[4].json() == HELLO


@pytest.mark.parametrize(
    ("sent", "status", "body"),
    [
        (request("GET", "/json", "connection: close"), 200, json.dumps(HELLO, separators=(",", ":")).encode()),
        (request("HEAD", "/json", "connection: close"), 200, b""),
        (request("POST", "/empty", "connection: close", body=b"{}"), 204, b""),
        # Pipelined behind another: the held head of the last answer still goes out before the connection closes.
        (request("GET", "/slow") + request("HEAD", "/json", "connection: close"), 200, b""),
    ],
    ids=["json", "head", "204", "head-pipelined"],
)
async def test_with_connection_close_the_answer_arrives_whole_before_the_close(
    served: Served, sent: bytes, status: int, body: bytes
) -> None:
    async with connect(served) as client:
        client.send(sent)
        received = await asyncio.wait_for(client.reader.read(), WAIT_S)  # to the end: the server closes

    last = received.rsplit(b"HTTP/1.1 ", 1)[-1]
    head_bytes, _, rest = last.partition(b"\r\n\r\n")
    assert head_bytes.startswith(str(status).encode())
    assert b"connection: close" in head_bytes.lower()
    assert rest == body


async def test_a_stream_gets_its_head_before_its_first_event(served: Served) -> None:
    async with connect(served) as client:
        client.send(request("GET", "/stream"))
        status, headers = await client.head()  # the first event is not due yet
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        served.first_chunk.set()
        chunk = await asyncio.wait_for(client.reader.readuntil(b"\n\n\r\n"), WAIT_S)
    assert chunk.endswith(b"data: 1\n\n\r\n")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(served: Served) -> None:
    body = b'{"big": "body"}'
    async with connect(served) as client:
        client.send(request("POST", "/echo", "expect: 100-continue", f"content-length: {len(body)}"))
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(body)
        answer = await client.answer()
    assert (answer.status, answer.body) == (201, body)


async def test_body_bytes_that_look_like_a_status_line_go_out_as_they_are(served: Served) -> None:
    async with connect(served) as client:
        client.send(request("GET", "/look-alike"))
        answer = await client.answer()
        client.send(request("GET", "/json"))
        after = await client.answer()
    assert answer.body == b"".join(LOOK_ALIKE)
    assert after.json() == HELLO
