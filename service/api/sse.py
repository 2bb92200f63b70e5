"""``GET /v1/tasks/{id}/stream``: one task's events as Server-Sent Events, for clients that cannot use the socket.

A stream is a follower of the process's live hub, like a WebSocket: it registers for its task before it reads the
task's log, keeps live events that arrive meanwhile, and sends each event once, in ``seq`` order. It never acks and
takes no part in the task's presence key, so a delivery never waits for it. Its queue is bounded: a client that
reads more slowly than its task writes is told so in a comment and the stream ends; EventSource reconnects with
``Last-Event-ID`` and the stream resumes from the log. A client that stops reading altogether is cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator

import msgspec
from redis.exceptions import RedisError

from schemas.events import Event, EventType
from schemas.tasks import TaskRecord
from service.api.http_protocol import ConnectionControl
from service.api.live import EventHead, LiveHub, event_body, stored_event
from service.api.ws import STORE_LOST_MESSAGE, subscribed_frame
from service.tasks.event_log import EventLog

log = logging.getLogger("relay.sse")

# Chunks one stream may have waiting before its client counts as too slow (the stream ends; the client resumes).
STREAM_QUEUE_CHUNKS = 1024
# The contract's bound on the silence between two writes of a stream: a comment line at least this often.
MAX_KEEPALIVE_S = 15.0

KEEPALIVE = b": keepalive\n\n"
STORE_LOST = b"event: error\ndata: %s\n\n" % msgspec.json.encode({"code": "store_lost", "message": STORE_LOST_MESSAGE})
TOO_SLOW = b": too far behind; reconnect with Last-Event-ID to resume\n\n"

_FINAL = {t.value for t in EventType if t.final}
_encode = msgspec.json.Encoder().encode


def keepalive_s(ping_interval_s: float) -> float:
    """How long a stream may stay silent: the WebSocket ping interval, at most the contract's 15 s."""
    return min(MAX_KEEPALIVE_S, ping_interval_s)


def event_chunk(head: EventHead, body: bytes) -> bytes:
    # An encoded Event holds no newline (msgspec writes compact JSON and escapes them in strings).
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (head.seq, head.type.encode(), body)


class EventStream:
    """One task's stream: a :class:`~service.api.live.Follower` for the hub, and the chunks of the response.

    Args:
        hub: the process's live hub.
        events: the event log, for the catch-up.
        record: the task, as read when the stream was authorised.
        after_seq: the last seq the client has.
        keepalive_s: the longest silence before a comment line.
        stall_s: how long one write may wait on a client that does not read before the connection is cut.
        control: the connection's control, when the server offers it (uvicorn with Relay's protocol).
    """

    def __init__(
        self,
        *,
        hub: LiveHub,
        events: EventLog,
        record: TaskRecord,
        after_seq: int,
        keepalive_s: float,
        stall_s: float,
        control: ConnectionControl | None = None,
    ) -> None:
        self._hub = hub
        self._events = events
        self._record = record
        self._after_seq = after_seq
        self._last_seq = after_seq  # the highest seq queued or sent
        self._keepalive_s = keepalive_s
        self._stall_s = stall_s
        self._control = control
        self._chunks: deque[bytes] = deque()
        self._buffer: list[tuple[EventHead, bytes]] | None = []  # live events while reading the log
        self._wakeup: asyncio.Future[None] | None = None
        self._resync = False
        self._ending: bytes | None = None  # why the stream ends early (sent as a comment), once set
        self._final_queued = False
        self._last_write = time.monotonic()
        self._writing_since: float | None = None  # a chunk handed to the server and not yet taken by the client
        self._cut = False

    @property
    def task_id(self) -> str:
        return self._record.id

    # The hub's side.

    def followed_tasks(self) -> tuple[str, ...]:
        return (self._record.id,)

    def offer(self, head: EventHead, frame: bytes) -> None:
        if self._ending is not None or self._final_queued:
            return
        if self._buffer is not None:
            if len(self._buffer) >= STREAM_QUEUE_CHUNKS:
                self._end(TOO_SLOW)
                return
            self._buffer.append((head, event_body(frame)))
        elif head.seq > self._last_seq:
            self._queue(head, event_body(frame))

    def resync(self) -> None:
        """The hub missed events: read what follows ``last_seq`` from the log before anything live."""
        self._resync = True
        self._wake()

    def heartbeat(self, now: float) -> None:
        if self._writing_since is not None:
            if now - self._writing_since > self._stall_s and self._control is not None and not self._cut:
                # The client took nothing for that long: it is gone or stuck, and what it holds is bounded
                # only by the socket's buffers. Cut it; a live client reconnects with Last-Event-ID.
                self._cut = True
                log.info("stream of task %s cut: its client read nothing for %.0f s", self._record.id, self._stall_s)
                self._control.abort()
        elif not self._chunks and now - self._last_write >= self._keepalive_s:
            self._put(KEEPALIVE)

    def store_lost(self) -> None:
        """The task is gone with the store's data: an ``error`` event, and the stream ends."""
        self._end(STORE_LOST)

    # The response's side.

    def end(self) -> None:
        """End the stream soon (the server is shutting down): the client reconnects with Last-Event-ID."""
        self._end(b"")

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The response body: ``subscribed``, the retained events after ``after_seq``, then live ones, up to the
        task's final event."""
        self._hub.attach(self)
        unregister = self._control.on_shutdown(self.end) if self._control is not None else None
        try:
            await self._hub.follow(self._record.id, self, presence=False)
            stored = await self._read_after(self._after_seq)
            if stored is None:
                return
            subscribed = subscribed_frame(self._record, self._after_seq, stored)
            yield self._handing(b"event: subscribed\ndata: %s\n\n" % _encode(subscribed))
            self._handed()
            # Ended before this stream began: what the log has is all there is (its final event, unless the client
            # has it already or it is no longer retained).
            ended = subscribed.status.finished
            while True:
                # Catching up from the log; live events wait in the buffer meanwhile.
                for event in stored:
                    if self._ending is not None:
                        break
                    if event.seq > self._last_seq and not self._final_queued:
                        head, body = stored_event(event)
                        self._note(head)
                        yield self._handing(event_chunk(head, body))
                        self._handed()
                self._drain_buffer()
                if ended:
                    return
                # Live, until the final event, an early end, or the hub asks for another catch-up.
                while not self._resync:
                    if self._ending is not None:
                        if self._ending:
                            yield self._handing(self._ending)
                            self._handed()
                        return
                    if self._chunks:
                        yield self._handing(self._chunks.popleft())
                        self._handed()
                    elif self._final_queued:
                        return
                    else:
                        self._wakeup = asyncio.get_running_loop().create_future()
                        await self._wakeup
                        self._wakeup = None
                self._resync = False
                self._buffer = []
                stored = await self._read_after(self._last_seq)
                if stored is None:
                    return
        finally:
            self._writing_since = None
            self._hub.unfollow(self._record.id, self)
            self._hub.detach(self)
            if unregister is not None:
                unregister()

    async def _read_after(self, seq: int) -> list[Event] | None:
        try:
            return await self._events.events_after(self._record.id, seq)
        except RedisError as exc:
            # Redis is away for a moment: end the stream; the client reconnects and resumes from where it is.
            log.warning("stream of task %s: reading its log failed (%s); ending it", self._record.id, exc)
            return None

    def _drain_buffer(self) -> None:
        buffered, self._buffer = self._buffer or [], None
        for head, body in sorted(buffered, key=lambda item: item[0].seq):
            if head.seq > self._last_seq and not self._final_queued:
                self._queue(head, body)

    def _queue(self, head: EventHead, body: bytes) -> None:
        self._note(head)
        self._put(event_chunk(head, body))

    def _note(self, head: EventHead) -> None:
        self._last_seq = head.seq
        if head.type in _FINAL:
            self._final_queued = True

    def _put(self, chunk: bytes) -> None:
        if self._ending is not None:
            return
        if len(self._chunks) >= STREAM_QUEUE_CHUNKS:
            self._end(TOO_SLOW)
            return
        self._chunks.append(chunk)
        self._wake()

    def _end(self, comment: bytes) -> None:
        if self._ending is None:
            self._ending = comment
            self._chunks.clear()
            self._hub.unfollow(self._record.id, self)  # nothing more piles up meanwhile
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _handing(self, chunk: bytes) -> bytes:
        self._writing_since = time.monotonic()
        return chunk

    def _handed(self) -> None:
        # The generator resumes once the server has written the chunk (it waits while the client does not read).
        self._writing_since = None
        self._last_write = time.monotonic()
