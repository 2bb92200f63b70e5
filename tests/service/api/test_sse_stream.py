"""One task's event stream in-process, with the hub's side driven by hand: live events that arrive while the log is
read come once and in order, a client too slow for its task is told so and the stream ends, a silent stream gets
comments, and a client that takes nothing is cut."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

import msgspec

from schemas.events import Event, EventType
from schemas.tasks import TaskRecord, TaskStatus
from service.api.http_protocol import ConnectionControl
from service.api.live import LiveHub, event_frame, stored_event
from service.api.sse import KEEPALIVE, STREAM_QUEUE_CHUNKS, TOO_SLOW, EventStream

TASK = "task_1"


def event(seq: int, type_: EventType = EventType.PROGRESS) -> Event:
    data: Any = {"percent": seq, "message": None} if not type_.final else {"status": "succeeded", "result": seq}
    return Event(id=f"evt_{seq}", type=type_, task_id=TASK, seq=seq, created_at=datetime.now(UTC), data=data)


class Log:
    """The event log: what it holds, and a hook run while a read is under way (a live event arriving then)."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.during_read: list[Any] = []

    async def events_after(self, task_id: str, after_seq: int = 0) -> list[Event]:
        for hook in self.during_read:
            hook()
        self.during_read = []
        await asyncio.sleep(0)
        return [e for e in self.events if e.seq > after_seq]


class Control:
    def __init__(self) -> None:
        self.aborted = False
        self.callbacks: list[Any] = []

    def abort(self) -> None:
        self.aborted = True

    def on_shutdown(self, callback: Any) -> Any:
        self.callbacks.append(callback)
        return lambda: None


def record() -> TaskRecord:
    return TaskRecord(
        id=TASK, kind="sleep", status=TaskStatus.RUNNING, input=None, created_at=datetime.now(UTC), tenant="acme"
    )


def hub() -> LiveHub:
    return LiveHub(redis=cast(Any, None), presence_ttl_s=30)  # streams never touch presence keys: no Redis needed


def make(log: Log, *, control: Control | None = None, after_seq: int = 0, keepalive_s: float = 60) -> EventStream:
    return EventStream(
        hub=hub(),
        events=cast(Any, log),
        record=record(),
        after_seq=after_seq,
        keepalive_s=keepalive_s,
        stall_s=5,
        control=cast(ConnectionControl, control),
    )


def offer(stream: EventStream, e: Event) -> None:
    head, body = stored_event(e)
    stream.offer(head, event_frame(body))


def ids(chunks: list[bytes]) -> list[int]:
    return [int(c.split(b"\n", 1)[0].removeprefix(b"id: ")) for c in chunks if c.startswith(b"id: ")]


async def take(stream_chunks: Any, n: int) -> list[bytes]:
    return [await asyncio.wait_for(anext(stream_chunks), 2) for _ in range(n)]


async def test_live_events_that_arrive_while_the_log_is_read_come_once_and_in_order() -> None:
    log = Log([event(1), event(2)])
    stream = make(log)
    # While the log is read, seq 2 (already in it) and 3 arrive live, out of order.
    log.during_read = [lambda: offer(stream, event(3)), lambda: offer(stream, event(2))]
    chunks = stream.chunks()

    got = await take(chunks, 4)
    offer(stream, event(3))  # a repeat
    offer(stream, event(4, EventType.COMPLETED))
    got += [chunk async for chunk in chunks]  # ends after the final event

    assert got[0].startswith(b"event: subscribed\ndata: ")
    assert msgspec.json.decode(got[0].split(b"data: ", 1)[1])["last_seq"] == 2
    assert ids(got) == [1, 2, 3, 4]
    assert got[-1].startswith(b"id: 4\nevent: task.completed\ndata: {")


async def test_a_client_too_slow_for_its_task_is_told_so_and_the_stream_ends() -> None:
    stream = make(Log([]))
    chunks = stream.chunks()
    await take(chunks, 1)  # subscribed; from here on the client reads nothing

    for seq in range(1, STREAM_QUEUE_CHUNKS + 2):
        offer(stream, event(seq))
    rest = [chunk async for chunk in chunks]

    assert rest == [TOO_SLOW]  # what was queued is dropped: the client resumes from the log with Last-Event-ID


async def test_a_silent_stream_gets_a_comment_each_keepalive() -> None:
    stream = make(Log([]), keepalive_s=0.01)
    chunks = stream.chunks()
    await take(chunks, 1)
    waiting = asyncio.ensure_future(anext(chunks))  # the server wrote it: the stream waits for something to send
    await asyncio.sleep(0.02)

    stream.heartbeat(time.monotonic())

    assert await asyncio.wait_for(waiting, 2) == KEEPALIVE
    await chunks.aclose()


async def test_a_client_that_takes_nothing_for_the_stall_time_is_cut() -> None:
    control = Control()
    stream = make(Log([]), control=control)
    chunks = stream.chunks()
    await take(chunks, 1)  # handed to the server; the generator is not resumed: the write has not finished

    stream.heartbeat(0.0)
    assert not control.aborted
    stream.heartbeat(time.monotonic() + 6)
    assert control.aborted
    await chunks.aclose()


async def test_a_shutdown_ends_the_stream() -> None:
    control = Control()
    stream = make(Log([event(1)]), control=control)
    chunks = stream.chunks()
    await take(chunks, 2)

    for callback in control.callbacks:
        callback()

    assert [chunk async for chunk in chunks] == []
