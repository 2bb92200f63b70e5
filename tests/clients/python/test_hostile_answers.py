"""What the client does against a host that is not Relay, or a Relay that misbehaves: answers too big or too slow,
endless stream lines, streams that never end, redirects, lists that would never end, URLs that cannot work. Each
case against a real socket on 127.0.0.1 (the byte-level ones) or respx (the page-level ones), with both clients:
it must end, soon, with an error of the client's tree, and never hold more than its bound in memory."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import respx
from relay_client import (
    NO_RETRIES,
    ApiError,
    AsyncRelay,
    ConnectError,
    Relay,
    RequestTimeout,
    Retries,
    UnexpectedAnswer,
    WaitTimeout,
)

TASK = {"id": "task_1", "kind": "echo", "status": "queued", "input": 1, "created_at": "2026-12-07T00:00:00Z"}
MIB = 1024 * 1024
# How long a hostile answer goes on at most (the test's own bound): a client that did not cut it shows as slow.
HOSTILE_FOR_S = 10.0


def _event(seq: int) -> dict[str, Any]:
    return {
        "id": f"evt_{seq}",
        "type": "task.progress",
        "task_id": "task_1",
        "seq": seq,
        "created_at": "2026-12-07T00:00:00Z",
        "data": {},
    }


class _Hostile(BaseHTTPRequestHandler):
    """One behaviour per path prefix; ``written`` counts the body bytes each prefix got out before the client
    stopped reading."""

    protocol_version = "HTTP/1.1"
    written: dict[str, int]

    def do_GET(self) -> None:
        kind = self.path.split("/")[1]
        getattr(self, "_" + kind.replace("-", "_"))()

    do_POST = do_GET

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _pour(self, kind: str, chunk: bytes, *, total: int, every_s: float = 0.0) -> None:
        """Write ``chunk`` again and again up to ``total`` bytes, or until the client hangs up or time is up."""
        self.written[kind] = 0
        until = time.monotonic() + HOSTILE_FOR_S
        try:
            while self.written[kind] < total and time.monotonic() < until:
                self.wfile.write(chunk)
                self.written[kind] += len(chunk)
                if every_s:
                    time.sleep(every_s)
        except OSError:
            pass  # the client stopped reading: what it should do
        self.close_connection = True

    def _declared(self) -> None:  # says 400 MB, sends nothing
        self._head(200, {"content-type": "application/json", "content-length": str(400 * 10**6)})
        self._pour("declared", b"", total=1, every_s=0.1)

    def _big(self) -> None:  # an answer with no length that never stops
        self._head(200, {"content-type": "application/json", "connection": "close"})
        self._pour("big", b"[" * 65536, total=64 * MIB)

    def _big_error(self) -> None:
        self._head(500, {"content-type": "text/plain", "connection": "close"})
        self._pour("big-error", b"x" * 65536, total=64 * MIB)

    def _trickle(self) -> None:  # a byte every 0.1 s, each read well within any read timeout
        self._head(200, {"content-type": "application/json", "content-length": "1000"})
        self._pour("trickle", b" ", total=1000, every_s=0.1)

    def _trickle_error(self) -> None:  # an error answer, to a stream as to any call, that trickles
        self._head(500, {"content-type": "text/plain", "content-length": "1000"})
        self._pour("trickle-error", b"x", total=1000, every_s=0.1)

    def _long_line(self) -> None:
        self._head(200, {"content-type": "text/event-stream", "connection": "close"})
        self.wfile.write(b"data: ")
        self._pour("long-line", b"x" * 65536, total=64 * MIB)

    def _long_event(self) -> None:
        self._head(200, {"content-type": "text/event-stream", "connection": "close"})
        self._pour("long-event", b"data: " + b"x" * 1000 + b"\n", total=64 * MIB)

    def _quiet(self) -> None:  # a stream of keep-alive comments that never ends, a poll that never answers
        if self.path.endswith("/stream"):
            self._head(200, {"content-type": "text/event-stream", "connection": "close"})
            self._pour("quiet", b": keep-alive\n\n", total=MIB, every_s=0.2)
        else:
            time.sleep(HOSTILE_FOR_S)

    def _hang_poll(self) -> None:  # no stream to be had, and a poll that never answers
        if self.path.endswith("/stream"):
            body = b'{"detail": "streams are full"}'
            self._head(503, {"content-type": "application/json", "retry-after": "60", "content-length": "30"})
            self.wfile.write(body)
        else:
            time.sleep(HOSTILE_FOR_S)

    def _redirect(self) -> None:
        self._head(307, {"location": "http://127.0.0.1:9/elsewhere", "content-length": "0"})

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[str, dict[str, int]]]:
    written: dict[str, int] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Hostile", (_Hostile,), {"written": written}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", written
    finally:
        server.shutdown()
        server.server_close()


Client = Callable[..., Any]


def _sync_call(url: str, do: Callable[[Any], Any], **options: Any) -> Any:
    with Relay(url, "key", retries=options.pop("retries", NO_RETRIES), **options) as relay:
        return do(relay)


def _async_call(url: str, do: Callable[[Any], Awaitable[Any]], **options: Any) -> Any:
    async def run() -> Any:
        async with AsyncRelay(url, "key", retries=options.pop("retries", NO_RETRIES), **options) as relay:
            return await do(relay)

    return asyncio.run(run())


# Each operation as a sync and an async function of a client.
GET = (lambda r: r.tasks.get("task_1"), lambda r: r.tasks.get("task_1"))


def _stream_sync(relay: Relay) -> list[Any]:
    return list(relay.tasks.stream("task_1"))


async def _stream_async(relay: AsyncRelay) -> list[Any]:
    return [event async for event in relay.tasks.stream("task_1")]


def _list_sync(relay: Relay) -> list[str]:
    return [task.id for task in relay.tasks.list()]


async def _list_async(relay: AsyncRelay) -> list[str]:
    return [task.id async for task in relay.tasks.list()]


def _events_sync(relay: Relay) -> list[int]:
    return [event.seq for event in relay.tasks.events("task_1")]


async def _events_async(relay: AsyncRelay) -> list[int]:
    return [event.seq async for event in relay.tasks.events("task_1")]


async def _wait_async(relay: AsyncRelay) -> Any:
    return await relay.tasks.wait("task_1", timeout=1)


FLAVOURS = {
    "sync": (_sync_call, {"get": GET[0], "stream": _stream_sync, "list": _list_sync, "events": _events_sync}),
    "async": (_async_call, {"get": GET[1], "stream": _stream_async, "list": _list_async, "events": _events_async}),
}
FLAVOURS["sync"][1]["wait"] = lambda relay: relay.tasks.wait("task_1", timeout=1)
FLAVOURS["async"][1]["wait"] = _wait_async


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``call(url, "get", **client_options)``: the operation, with the flavour's client of ``url``."""
    run, operations = FLAVOURS[request.param]

    def go(url: str, operation: str, **options: Any) -> Any:
        return run(url, operations[operation], **options)

    return go


def _timed(do: Callable[[], Any]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(Exception) as raised:  # noqa: PT011 -- each test says which
        do()
    return raised.value, time.monotonic() - started


def test_an_answer_that_declares_more_than_the_bound_is_refused_before_it_is_read(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, _ = hostile
    error, took_s = _timed(lambda: call(url + "/declared", "get"))
    assert isinstance(error, UnexpectedAnswer)
    assert "max_answer_bytes" in str(error)
    assert took_s < 2


def test_an_answer_past_the_bound_is_cut_there_and_refused(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, written = hostile
    error, _ = _timed(lambda: call(url + "/big", "get", max_answer_bytes=MIB))
    assert isinstance(error, UnexpectedAnswer)
    assert f"more than {MIB} bytes" in str(error)
    time.sleep(0.5)  # the server notices the hang-up
    assert written["big"] < 32 * MIB  # read to the bound (and what socket buffers took), not to the end


def test_an_error_answer_is_read_up_to_64_kib_and_its_start_is_the_detail(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, written = hostile
    error, _ = _timed(lambda: call(url + "/big-error", "get"))
    assert isinstance(error, ApiError)
    assert error.status == 500
    assert error.detail.startswith("xxxx")
    time.sleep(0.5)
    assert written["big-error"] < 32 * MIB


def test_an_answer_that_trickles_ends_at_the_timeout_though_each_read_is_quick(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, _ = hostile
    error, took_s = _timed(lambda: call(url + "/trickle", "get", timeout=1.0))
    assert isinstance(error, RequestTimeout)
    assert took_s < 2.5  # the whole answer took 100 s


def test_a_streams_error_answer_ends_at_the_clients_timeout_as_any_answer_does(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, _ = hostile
    error, took_s = _timed(lambda: call(url + "/trickle-error", "stream", timeout=1.0))
    assert isinstance(error, RequestTimeout)
    assert took_s < 2.5  # the whole answer took 100 s


def test_a_streams_error_answer_ends_at_the_timeout_of_a_client_of_ones_own(
    hostile: tuple[str, dict[str, int]],
) -> None:
    url, _ = hostile
    with httpx.Client(timeout=1.0) as own:
        error, took_s = _timed(lambda: _sync_call(url + "/trickle-error", _stream_sync, http_client=own))
    assert isinstance(error, RequestTimeout)
    assert took_s < 2.5


@pytest.mark.parametrize("kind", ["long-line", "long-event"])
def test_an_endless_stream_line_or_event_is_refused_at_the_bound(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any], kind: str
) -> None:
    url, written = hostile
    error, _ = _timed(lambda: call(url + "/" + kind, "stream", max_answer_bytes=MIB))
    assert isinstance(error, UnexpectedAnswer)
    assert "longer than" in str(error)
    time.sleep(0.5)
    assert written[kind] < 32 * MIB


@pytest.mark.parametrize("kind", ["quiet", "hang-poll"])
def test_wait_ends_at_its_timeout_whatever_the_stream_or_the_poll_does(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any], kind: str
) -> None:
    url, _ = hostile
    error, took_s = _timed(lambda: call(url + "/" + kind, "wait", retries=Retries()))
    assert isinstance(error, WaitTimeout)
    assert 0.95 < took_s < 1.5


def test_a_redirect_is_not_followed_and_names_where_it_led(
    hostile: tuple[str, dict[str, int]], call: Callable[..., Any]
) -> None:
    url, _ = hostile
    error, _ = _timed(lambda: call(url + "/redirect", "get"))
    assert isinstance(error, UnexpectedAnswer)
    assert "307" in str(error)
    assert "http://127.0.0.1:9/elsewhere" in str(error)


@pytest.mark.parametrize("url", ["127.0.0.1:18731", "localhost", "ftp://127.0.0.1/", "http://", "/v1", ""])
def test_a_base_url_that_is_not_absolute_http_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        Relay(url, "key")
    with pytest.raises(ValueError, match="http:// or https://"):
        AsyncRelay(url, "key")


def test_a_url_httpx_cannot_send_to_is_never_retried() -> None:
    tries: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(str(request.url))
        raise httpx.UnsupportedProtocol("no transport for this URL")

    with (
        httpx.Client(transport=httpx.MockTransport(refuse)) as own,
        Relay("http://127.0.0.1:9", "k", http_client=own) as relay,
    ):
        with pytest.raises(ValueError, match="not a URL"):
            relay.tasks.get("task_1")
        with pytest.raises(ValueError, match="not a URL"):
            list(relay.tasks.stream("task_1"))

    async def run() -> None:
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client,
            AsyncRelay("http://127.0.0.1:9", "key", http_client=client) as relay,
        ):
            with pytest.raises(ValueError, match="not a URL"):
                await relay.tasks.get("task_1")
            with pytest.raises(ValueError, match="not a URL"):
                [event async for event in relay.tasks.stream("task_1")]

    asyncio.run(run())
    assert len(tries) == 4  # once each, no retry


@pytest.mark.parametrize("operation", ["get", "stream"])
def test_the_error_after_retries_says_how_many_tries_over_how_long(call: Callable[..., Any], operation: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again when the with ends: nothing listens there
    quick = Retries(deadline_s=1.0, initial_s=0.05, max_s=0.1)
    error, _ = _timed(lambda: call(f"http://127.0.0.1:{port}", operation, retries=quick))
    assert isinstance(error, ConnectError)
    assert "tries over 1 s)" in str(error) or "tries over 0 s)" in str(error)
    assert str(error).index("no answer in ") > 0


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url="http://relay.test", assert_all_called=False) as router:
        yield router


def test_a_list_that_answers_its_cursor_again_is_refused_not_followed_forever(
    mocked: respx.MockRouter, call: Callable[..., Any]
) -> None:
    pages = {None: {"items": [TASK], "next_cursor": "c1"}, "c1": {"items": [], "next_cursor": "c1"}}
    mocked.get("/v1/tasks").mock(side_effect=lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    error, _ = _timed(lambda: call("http://relay.test", "list"))
    assert isinstance(error, UnexpectedAnswer)
    assert "cursor it had answered before" in str(error)


def test_a_page_with_no_items_that_moves_on_is_followed_as_relays_lists_may_answer(
    mocked: respx.MockRouter, call: Callable[..., Any]
) -> None:
    pages = {
        None: {"items": [], "next_cursor": "c1"},  # looked at as many entries as a page may; none matched
        "c1": {"items": [], "next_cursor": "c2"},
        "c2": {"items": [TASK], "next_cursor": None},
    }
    mocked.get("/v1/tasks").mock(side_effect=lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    assert call("http://relay.test", "list") == ["task_1"]


def test_events_whose_next_after_seq_does_not_move_on_are_refused(
    mocked: respx.MockRouter, call: Callable[..., Any]
) -> None:
    pages = {"0": {"events": [_event(1)], "next_after_seq": 1}, "1": {"events": [], "next_after_seq": 1}}
    mocked.get("/v1/tasks/task_1/events").mock(
        side_effect=lambda r: httpx.Response(200, json=pages[r.url.params["after_seq"]])
    )
    error, _ = _timed(lambda: call("http://relay.test", "events"))
    assert isinstance(error, UnexpectedAnswer)
    assert "next_after_seq 1 after 1" in str(error)


def test_an_events_page_with_none_readable_that_moves_on_is_followed(
    mocked: respx.MockRouter, call: Callable[..., Any]
) -> None:
    pages = {
        "0": {"events": [_event(1)], "next_after_seq": 3},
        "3": {"events": [], "next_after_seq": 5},  # the events it read could not be decoded: skipped, not the end
        "5": {"events": [_event(6)], "next_after_seq": None},
    }
    mocked.get("/v1/tasks/task_1/events").mock(
        side_effect=lambda r: httpx.Response(200, text=json.dumps(pages[r.url.params["after_seq"]]))
    )
    assert call("http://relay.test", "events") == [1, 6]
