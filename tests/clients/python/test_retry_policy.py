"""The client's retry policy at the edge of one unit: the pure decisions, and the requests it makes against answers
scripted with respx (no Relay): what is retried, with which key, how long it waits, and what is never retried."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest
import respx
from relay_client import (
    AsyncRelay,
    Conflict,
    ConnectError,
    Invalid,
    Relay,
    RequestTimeout,
    Retries,
    TaskStatus,
    Unavailable,
    UnexpectedAnswer,
    _retry,
)
from relay_client.errors import RateLimited

URL = "http://relay.test"
TASK = {"id": "task_1", "kind": "echo", "status": "queued", "input": 1, "created_at": "2026-12-07T00:00:00Z"}
FAST = Retries(deadline_s=5, initial_s=0.01, max_s=0.04)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def retrier(policy: Retries | None = None, *, safe: bool = True) -> tuple[_retry.Retrier, FakeClock]:
    """The decisions of one call, on a clock the test moves and a seeded random source."""
    clock = FakeClock()
    return _retry.Retrier(policy or Retries(), safe=safe, clock=clock, rng=random.Random(7)), clock


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = Retries(deadline_s=1000, initial_s=0.5, max_s=4)
    decide, clock = retrier(policy)
    waits = []
    for _ in range(7):
        wait = decide.delay_s(Unavailable(503, "stalled"))
        assert wait is not None
        waits.append(wait)
        clock.now += wait
    for wait, base in zip(waits, [0.5, 1, 2, 4, 4, 4, 4], strict=True):
        assert base / 2 <= wait <= base
    assert len(set(waits)) == len(waits)  # jittered: no two alike


def test_retry_after_is_waited_for_and_the_deadline_ends_the_retries() -> None:
    decide, clock = retrier(Retries(deadline_s=10, initial_s=0.1, max_s=1))
    assert decide.delay_s(RateLimited(429, "slow down", retry_after_s=3)) == 3
    clock.now += 3
    assert decide.delay_s(Unavailable(503, "stalled", retry_after_s=6.5)) == 6.5
    clock.now += 6.5
    # 0.5 s of the deadline left: a wait of 1 s would end past it.
    assert decide.delay_s(Unavailable(503, "stalled", retry_after_s=1)) is None


def test_only_errors_a_retry_can_fix_are_retried_and_only_for_calls_safe_to_repeat() -> None:
    decide, _ = retrier()
    assert decide.delay_s(Invalid(422, "no such kind")) is None
    assert decide.delay_s(Conflict(409, "ended")) is None
    assert decide.delay_s(ConnectError("refused")) is not None
    assert decide.delay_s(RequestTimeout("slow")) is not None
    unsafe, _ = retrier(safe=False)
    assert unsafe.delay_s(Unavailable(503, "stalled")) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert _retry.retry_after_s("2") == 2
    assert _retry.retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10
    assert _retry.retry_after_s("soon") is None
    assert _retry.retry_after_s(None) is None


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


def test_a_submission_is_retried_with_one_key_through_503_429_and_a_dropped_connection(
    mocked: respx.MockRouter,
) -> None:
    route = mocked.post("/v1/tasks").mock(
        side_effect=[
            httpx.Response(503, json={"status_code": 503, "detail": "stalled"}, headers={"Retry-After": "0"}),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("no answer"),
            httpx.Response(429, json={"status_code": 429, "detail": "slow down"}),
            httpx.Response(202, json=TASK),
        ]
    )
    with Relay(URL, "key", retries=FAST) as relay:
        task = relay.tasks.submit("echo", 1)

    assert task.status is TaskStatus.QUEUED
    keys = [call.request.headers["idempotency-key"] for call in route.calls]
    assert len(keys) == 5
    assert len(set(keys)) == 1
    assert route.calls[0].request.headers["authorization"] == "Bearer key"


def test_each_submission_gets_its_own_key_and_the_callers_key_is_kept(mocked: respx.MockRouter) -> None:
    route = mocked.post("/v1/tasks").mock(return_value=httpx.Response(202, json=TASK))
    with Relay(URL, "key") as relay:
        relay.tasks.submit("echo", 1)
        relay.tasks.submit("echo", 1)
        relay.tasks.submit("echo", 1, idempotency_key="mine")
    first, second, mine = (call.request.headers["idempotency-key"] for call in route.calls)
    assert first != second
    assert mine == "mine"


def test_a_cancel_a_replay_and_a_rotation_are_never_retried(mocked: respx.MockRouter) -> None:
    stalled = httpx.Response(503, json={"status_code": 503, "detail": "stalled"}, headers={"Retry-After": "0"})
    routes = [
        mocked.post("/v1/tasks/task_1/cancel").mock(return_value=stalled),
        mocked.post("/v1/dead-letters/replay").mock(return_value=stalled),
        mocked.post("/v1/dead-letters/dl_1/replay").mock(side_effect=httpx.ReadTimeout("no answer")),
        mocked.post("/v1/signing-secret/rotate").mock(return_value=stalled),
        mocked.post("/v1/destinations/dst_1/pause").mock(return_value=stalled),
    ]
    with Relay(URL, "key", retries=FAST) as relay:
        with pytest.raises(Unavailable) as raised:
            relay.tasks.cancel("task_1")
        with pytest.raises(Unavailable):
            relay.dead_letters.replay_bulk(dry_run=False)
        with pytest.raises(RequestTimeout):
            relay.dead_letters.replay("dl_1")
        with pytest.raises(Unavailable):
            relay.signing_secret.rotate()
        with pytest.raises(Unavailable):
            relay.destinations.pause("dst_1")
    assert [route.call_count for route in routes] == [1, 1, 1, 1, 1]
    assert (raised.value.status, raised.value.detail, raised.value.retry_after_s) == (503, "stalled", 0)


def test_what_retrying_until_the_deadline_did_not_fix_is_raised(mocked: respx.MockRouter) -> None:
    route = mocked.get("/v1/tasks/task_1").mock(
        return_value=httpx.Response(503, json={"status_code": 503, "detail": "the store is away"})
    )
    patient = Retries(deadline_s=0.3, initial_s=0.05, max_s=0.1)
    with Relay(URL, "key", retries=patient) as relay, pytest.raises(Unavailable, match="the store is away"):
        relay.tasks.get("task_1")
    assert 2 <= route.call_count <= 10


def test_a_retry_after_beyond_the_deadline_is_raised_at_once(mocked: respx.MockRouter) -> None:
    route = mocked.get("/v1/tasks/task_1").mock(
        return_value=httpx.Response(429, json={"status_code": 429, "detail": "slow"}, headers={"Retry-After": "120"})
    )
    with Relay(URL, "key", retries=FAST) as relay, pytest.raises(RateLimited) as raised:
        relay.tasks.get("task_1")
    assert route.call_count == 1
    assert raised.value.retry_after_s == 120


async def test_the_async_client_retries_a_submission_with_one_key(mocked: respx.MockRouter) -> None:
    route = mocked.post("/v1/tasks").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"status_code": 503, "detail": "stalled"}),
            httpx.Response(202, json=TASK),
        ]
    )
    async with AsyncRelay(URL, "key", retries=FAST) as relay:
        task = await relay.tasks.submit("echo", 1)
        assert task.id == "task_1"
    assert len({call.request.headers["idempotency-key"] for call in route.calls}) == 1
    assert route.call_count == 3


async def test_the_async_client_does_not_retry_a_cancel(mocked: respx.MockRouter) -> None:
    route = mocked.post("/v1/tasks/task_1/cancel").mock(side_effect=httpx.ConnectError("refused"))
    async with AsyncRelay(URL, "key", retries=FAST) as relay:
        with pytest.raises(ConnectError):
            await relay.tasks.cancel("task_1")
    assert route.call_count == 1


def test_a_list_follows_next_cursor_to_the_last_page(mocked: respx.MockRouter) -> None:
    pages = {
        None: {"items": [TASK, {**TASK, "id": "task_2"}], "next_cursor": "c1"},
        "c1": {"items": [{**TASK, "id": "task_3"}], "next_cursor": None},
    }
    route = mocked.get("/v1/tasks").mock(
        side_effect=lambda request: httpx.Response(200, json=pages[request.url.params.get("cursor")])
    )
    with Relay(URL, "key") as relay:
        ids = [task.id for task in relay.tasks.list(status="queued", page_size=2)]
    assert ids == ["task_1", "task_2", "task_3"]
    assert [call.request.url.params.get("limit") for call in route.calls] == ["2", "2"]
    assert route.calls[1].request.url.params["status"] == "queued"


def _sse(*events: tuple[int, str]) -> bytes:
    chunks = [b'event: subscribed\ndata: {"type":"subscribed","task_id":"task_1"}\n\n', b": keepalive\n\n"]
    for seq, kind in events:
        event = {
            "id": f"evt_{seq}",
            "type": kind,
            "task_id": "task_1",
            "seq": seq,
            "created_at": "2026-12-07T00:00:00Z",
            "data": {},
        }
        chunks.append(f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n".encode())
    return b"".join(chunks)


def test_a_stream_that_ends_early_is_resumed_after_the_last_event_and_gives_each_once(
    mocked: respx.MockRouter,
) -> None:
    route = mocked.get("/v1/tasks/task_1/stream").mock(
        side_effect=[
            httpx.Response(200, content=_sse((1, "task.progress"), (2, "task.progress"))),  # then the connection ends
            httpx.ReadError("dropped"),
            httpx.Response(503, json={"status_code": 503, "detail": "restarting"}, headers={"Retry-After": "0"}),
            # The server may send again what the client saw (a resume point it keeps): handed on once only.
            httpx.Response(200, content=_sse((2, "task.progress"), (3, "task.progress"), (4, "task.completed"))),
        ]
    )
    with Relay(URL, "key", retries=FAST) as relay:
        seqs = [event.seq for event in relay.tasks.stream("task_1")]

    assert seqs == [1, 2, 3, 4]
    assert [call.request.headers.get("last-event-id") for call in route.calls] == [None, "2", "2", "2"]


def test_a_stream_resumed_after_its_final_event_ends_on_the_204(mocked: respx.MockRouter) -> None:
    route = mocked.get("/v1/tasks/task_1/stream").mock(return_value=httpx.Response(204))
    with Relay(URL, "key") as relay:
        assert list(relay.tasks.stream("task_1", after_seq=4)) == []
    assert route.calls[0].request.headers["last-event-id"] == "4"


async def test_the_async_stream_resumes_the_same_way(mocked: respx.MockRouter) -> None:
    mocked.get("/v1/tasks/task_1/stream").mock(
        side_effect=[
            httpx.Response(200, content=_sse((1, "task.progress"))),
            httpx.Response(200, content=_sse((1, "task.progress"), (2, "task.failed"))),
        ]
    )
    async with AsyncRelay(URL, "key", retries=FAST) as relay:
        seqs = [event.seq async for event in relay.tasks.stream("task_1")]
    assert seqs == [1, 2]


def test_an_answer_the_client_cannot_read_is_an_unexpected_answer(mocked: respx.MockRouter) -> None:
    mocked.get("/v1/tasks/task_1").mock(return_value=httpx.Response(200, text="<html>a proxy's page</html>"))
    with Relay(URL, "key") as relay, pytest.raises(UnexpectedAnswer):
        relay.tasks.get("task_1")
