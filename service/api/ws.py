"""``GET /v1/ws``: follow tasks live, ack their events, resume from a ``seq`` after any drop.

Each socket has a bounded send queue drained by its own sender task; the hub offers it events without
waiting. A queue that overflows closes the socket with 1013 (the client resumes from its last ``seq``), so a
slow consumer never makes the hub wait and never loses an event silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from redis.exceptions import RedisError

from delivery.errors import UnreadableRecord
from delivery.outbox import Outbox
from schemas.events import Event, EventType
from schemas.tasks import TaskRecord, TaskStatus, Webhook
from schemas.ws import Ack, ClientFrame, Error, Ping, Subscribe, Subscribed, Unsubscribe
from service.api.json_depth import json_depth_exceeds
from service.api.live import EventHead, LiveHub, event_frame, stored_event
from service.api.state import ApiState
from service.api.tenant_streams import TenantStreams
from service.tasks.event_log import EventLog
from service.tasks.store import TaskStore

log = logging.getLogger("relay.ws")

# Frames one socket may have waiting to be sent before it counts as a slow consumer.
SEND_QUEUE_FRAMES = 1024
# Catching up from the log waits while the send queue holds this many frames (the rest is for pings and live
# events): a resume from far back is not a slow consumer.
CATCH_UP_QUEUE_FRAMES = SEND_QUEUE_FRAMES // 2
# Tasks one socket may follow at once.
MAX_SUBSCRIPTIONS = 1000
# More bad frames than this in BAD_FRAME_WINDOW_S closes the socket with 1008.
MAX_BAD_FRAMES = 20
BAD_FRAME_WINDOW_S = 60.0

# Client frames are flat JSON objects; deeper ones are refused before they are decoded.
MAX_FRAME_DEPTH = 8

CLOSE_POLICY = 1008
CLOSE_SERVER_ERROR = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_NO_PONG = 4000
# How long a closing socket waits for its close frame to get out behind what it still has to send.
CLOSE_WAIT_S = 10.0

_decode_frame = msgspec.json.Decoder(ClientFrame).decode
_encode = msgspec.json.Encoder().encode
_FINAL = {t.value for t in EventType if t.final}
# Events one socket remembers for their ack at most (the oldest are forgotten first).
MAX_UNACKED = 4096
# What a socket and a stream are told before they end when the store lost its data (see delivery.epoch).
STORE_LOST_MESSAGE = (
    "the store lost its data: the tasks followed here no longer exist and will send no more events; submit them again"
)
# Queued after a socket's last frame: the sender closes the socket when it gets there.
_END = b""


@dataclass(slots=True)
class Subscription:
    task_id: str
    tenant: str
    webhook: Webhook | None
    last_seq: int  # the highest seq queued for this socket
    buffer: list[tuple[EventHead, bytes]] | None = field(default_factory=list)  # live events while catching up


@dataclass(slots=True)
class Sent:
    """An event sent to this socket whose delivery may wait for its ack (a final event, or one the task's webhook
    gets), remembered until acked so that the ack can settle it."""

    task_id: str
    tenant: str
    created_at: float
    sent_at: float
    has_webhook: bool


class Connection:
    def __init__(
        self,
        socket: WebSocket,  # type: ignore[type-arg]
        *,
        hub: LiveHub,
        tasks: TaskStore,
        events: EventLog,
        outbox: Outbox,
        places: TenantStreams,
        ping_interval_s: float,
        ping_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self._socket = socket
        self._hub = hub
        self._idle_timeout_s = idle_timeout_s
        self._tasks = tasks
        self._events = events
        self._outbox = outbox
        self._places = places
        self._held: dict[str, str] = {}  # tenant -> this socket's place in its count (RELAY_TENANT_MAX_STREAMS)
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        # The send queue: a deque and one future the sender waits on (an asyncio.Queue costs ~3 KB a socket).
        self._frames: deque[bytes] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._subs: dict[str, Subscription] = {}
        self._sent: dict[str, Sent] = {}
        self._bad_frames: deque[float] | None = None  # made at the first bad frame
        self._last_heard = time.monotonic()
        self._last_ping = self._last_heard
        self._idle_since: float | None = self._last_heard  # following no task since then
        self._ping_outstanding = False
        self._closing = False
        # Set when the socket ends once what is queued has gone out: the close code and reason.
        self._last_words: tuple[int, str] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None
        # Made when catching up must wait; set when the send queue has room again, or the socket closes.
        self._room: asyncio.Event | None = None

    # The hub's side.

    def followed_tasks(self) -> Iterable[str]:
        return self._subs.keys()

    def offer(self, head: EventHead, frame: bytes) -> None:
        sub = self._subs.get(head.task_id)
        if sub is None:
            return
        if sub.buffer is not None:
            if len(sub.buffer) >= SEND_QUEUE_FRAMES:
                # Live events pile up faster than the catch-up sends: the same policy as a full send queue.
                self._close_soon(CLOSE_TRY_AGAIN, "too far behind; resume from your last seq")
                return
            sub.buffer.append((head, frame))
        elif head.seq > sub.last_seq:
            self._queue_event(sub, head, frame)

    def store_lost(self) -> None:
        if self._closing or self._last_words is not None:
            return
        self._error("store_lost", STORE_LOST_MESSAGE)
        # Behind what is queued, so that the error frame goes out before the close.
        self._last_words = (CLOSE_SERVER_ERROR, "the store lost its data")
        self._frames.append(_END)
        self._wake()

    def resync(self) -> None:
        for task_id in list(self._subs):
            self._spawn(self._catch_up(task_id))

    def heartbeat(self, now: float) -> None:
        if self._closing:
            return
        if self._idle_since is not None and now - self._idle_since > self._idle_timeout_s:
            self._close_soon(CLOSE_POLICY, "this socket follows no task")
            return
        if self._ping_outstanding:
            # No new ping while one is unanswered: the timeout runs from the first unanswered ping.
            if now - self._last_ping > self._ping_timeout_s:
                self._close_soon(CLOSE_NO_PONG, "no pong")
        elif now - self._last_ping >= self._ping_interval_s:
            self._last_ping = now
            self._ping_outstanding = True
            self._put(_encode(Ping()))

    # The socket's side.

    async def run(self) -> None:
        self._hub.attach(self)
        sender = asyncio.create_task(self._send_loop())
        try:
            await self._receive_loop()
        finally:
            self._closing = True
            self._hub.detach(self)
            for task_id in list(self._subs):
                self._hub.unfollow(task_id, self)
            for place in self._held.values():
                self._places.release(place)
            self._held.clear()
            sender.cancel()
            try:
                if self._closer is not None:
                    # Cancelled, the close frame would never go out and the client would see 1006, not why
                    # (1008, 1013, 4000); behind a full send buffer it waits for a client that reads again.
                    await asyncio.wait([self._closer], timeout=CLOSE_WAIT_S)
            finally:
                for task in (sender, *self._background):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _receive_loop(self) -> None:
        while not self._closing:
            message = await self._socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            self._last_heard = time.monotonic()
            self._ping_outstanding = False
            data: str | bytes | None = message.get("text")  # type: ignore[assignment]
            if data is None:
                data = message.get("bytes")  # type: ignore[assignment]
            raw = data.encode() if isinstance(data, str) else data or b""
            if json_depth_exceeds(raw, MAX_FRAME_DEPTH):
                self._bad_frame(
                    "bad_frame", f"not a frame this socket understands: nested deeper than {MAX_FRAME_DEPTH}"
                )
                continue
            try:
                frame = _decode_frame(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._bad_frame("bad_frame", _describe(exc))
                continue
            try:
                await self._handle(frame)
            except RedisError as exc:
                # Redis is away for a moment: say so; the client may try again (or resume later).
                log.warning("a %s frame failed: %s", type(frame).__name__.lower(), exc)
                task_id = getattr(frame, "task_id", None)
                self._error("unavailable", "storage is unavailable; try again shortly", task_id)

    async def _handle(self, frame: ClientFrame) -> None:
        if isinstance(frame, Ack):
            await self._ack(frame)
        elif isinstance(frame, Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, Unsubscribe):
            self._unsubscribe(frame.task_id)

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._frames:
                    self._wakeup = asyncio.get_running_loop().create_future()
                    await self._wakeup
                    self._wakeup = None
                frame = self._frames.popleft()
                if frame is _END and self._last_words is not None:
                    self._close_soon(*self._last_words)
                    return
                if self._room is not None and len(self._frames) < CATCH_UP_QUEUE_FRAMES:
                    self._room.set()
                await self._socket.send_text(frame.decode())
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The client went away (uvicorn raises ClientDisconnected, an OSError): the receive loop ends too.
            self._closing = True
            if self._room is not None:
                self._room.set()

    async def _subscribe(self, frame: Subscribe) -> None:
        if frame.task_id not in self._subs and len(self._subs) >= MAX_SUBSCRIPTIONS:
            self._error(
                "too_many_subscriptions", f"one socket follows at most {MAX_SUBSCRIPTIONS} tasks", frame.task_id
            )
            return

        def token_fits(tenant: str, token: str | None) -> bool:
            return token is not None and hmac.compare_digest(frame.token.encode(), token.encode())

        record = None
        if frame.task_id.startswith("task_"):
            with contextlib.suppress(UnreadableRecord):  # logged and counted where it was read
                record = await self._tasks.get(frame.task_id, visible=token_fits)
        if record is None:
            # The same answer for a task that does not exist, has expired, or is not this token's.
            self._bad_frame("forbidden", "unknown task, or a token that is not this task's", frame.task_id)
            return
        followed = self._subs.get(record.id)
        if followed is not None:
            # Followed already: say where it stands, and replay nothing (what this socket was sent stays sent).
            self._put(
                _encode(Subscribed(task_id=record.id, status=record.status, last_seq=followed.last_seq, recovered=True))
            )
            return
        if record.tenant not in self._held:
            place = await self._places.acquire(record.tenant)
            if place is None:
                self._close_soon(
                    CLOSE_TRY_AGAIN,
                    f"this tenant has {self._places.limit} sockets and streams open (RELAY_TENANT_MAX_STREAMS)",
                )
                return
            if self._closing:
                self._places.release(place)
                return
            self._held[record.tenant] = place
        sub = Subscription(task_id=record.id, tenant=record.tenant, webhook=record.webhook, last_seq=frame.after_seq)
        self._subs[record.id] = sub
        self._idle_since = None
        try:
            # Present before the log is read (one trip): an event appended after the read then finds the socket
            # present, and waits for its ack rather than going out as a webhook at once.
            present = self._hub.start_following(record.id, self)
            await self._hub.listening(record.id)  # on a cluster: its channel subscribed before the log is read
            retained = await self._events.events_after(record.id, frame.after_seq, first=present)
        except BaseException:
            self._unsubscribe(record.id)  # not half-registered: the client subscribes again
            raise
        if self._subs.get(record.id) is not sub:
            return  # unsubscribed while reading
        self._put(_encode(subscribed_frame(record, frame.after_seq, retained)))
        for event in retained:
            await self._queue_stored(sub, event)
        self._drain_buffer(sub)

    async def _catch_up(self, task_id: str) -> None:
        """Send what the task's log has beyond what this socket got (after the hub missed live events)."""
        sub = self._subs.get(task_id)
        if sub is None or sub.buffer is not None:
            return
        sub.buffer = []
        for event in await self._events.events_after(task_id, sub.last_seq):
            await self._queue_stored(sub, event)
        self._drain_buffer(sub)

    def _drain_buffer(self, sub: Subscription) -> None:
        buffered, sub.buffer = sub.buffer or [], None
        for head, frame in sorted(buffered, key=lambda item: item[0].seq):
            if head.seq > sub.last_seq:
                self._queue_event(sub, head, frame)

    async def _queue_stored(self, sub: Subscription, event: Event) -> None:
        # A client that stops reading meanwhile is closed by the heartbeat (its pongs wait unread), or its
        # send fails: either sets _closing and _room.
        while len(self._frames) >= CATCH_UP_QUEUE_FRAMES and not self._closing:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if event.seq <= sub.last_seq or self._subs.get(sub.task_id) is not sub:
            return
        head, body = stored_event(event)
        self._queue_event(sub, head, event_frame(body))

    def _queue_event(self, sub: Subscription, head: EventHead, frame: bytes) -> None:
        sub.last_seq = head.seq
        posts = _posts(sub.webhook, head.type)
        if posts or head.type in _FINAL:
            if len(self._sent) >= MAX_UNACKED:
                # A client that never acks: its oldest unacked events' webhooks go out once their ack time is up.
                del self._sent[next(iter(self._sent))]
            self._sent[head.id] = Sent(
                task_id=head.task_id,
                tenant=sub.tenant,
                created_at=_timestamp(head.created_at),
                sent_at=time.monotonic(),
                has_webhook=posts,
            )
        self._put(frame)

    def _unsubscribe(self, task_id: str) -> None:
        if self._subs.pop(task_id, None) is not None:
            self._hub.unfollow(task_id, self)
            # Its final event can no longer be acked from here: forget it (the webhook takes over, if any).
            for event_id in [e for e, sent in self._sent.items() if sent.task_id == task_id]:
                del self._sent[event_id]
            if not self._subs:
                self._idle_since = time.monotonic()

    async def _ack(self, frame: Ack) -> None:
        sent = self._sent.pop(frame.event_id, None)
        if sent is None:
            return  # an event no delivery waits for, or one acked already
        try:
            await self._outbox.ack(
                event_id=frame.event_id,
                task_id=sent.task_id,
                tenant=sent.tenant,
                created_at=sent.created_at,
                has_webhook=sent.has_webhook,
                duration_ms=(time.monotonic() - sent.sent_at) * 1000,
            )
        except Exception:
            # Not settled: the delivery times out and its webhook (if any) goes out; at-least-once holds.
            log.exception("recording the ack of event %s failed", frame.event_id)

    # Sending and closing.

    def _put(self, frame: bytes) -> None:
        if self._closing or self._last_words is not None:
            return
        if len(self._frames) >= SEND_QUEUE_FRAMES:
            self._close_soon(CLOSE_TRY_AGAIN, "send queue full; resume from your last seq")
            return
        self._frames.append(frame)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _error(self, code: str, message: str, task_id: str | None = None) -> None:
        self._put(_encode(Error(code=code, message=message, task_id=task_id)))

    def _bad_frame(self, code: str, message: str, task_id: str | None = None) -> None:
        now = time.monotonic()
        if self._bad_frames is None:
            self._bad_frames = deque()
        self._bad_frames.append(now)
        while self._bad_frames and now - self._bad_frames[0] > BAD_FRAME_WINDOW_S:
            self._bad_frames.popleft()
        if len(self._bad_frames) > MAX_BAD_FRAMES:
            self._close_soon(CLOSE_POLICY, "too many bad frames")
        else:
            self._error(code, message, task_id)

    def _close_soon(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        if self._room is not None:
            self._room.set()
        self._closer = asyncio.create_task(self._close(code, reason))
        self._background.add(self._closer)
        self._closer.add_done_callback(self._background.discard)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._socket.close(code=code, reason=reason)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def subscribed_frame(record: TaskRecord, after_seq: int, retained: list[Event]) -> Subscribed:
    """Where a follower starts: the task's status and last seq as of its log, and whether every event after
    ``after_seq`` is still retained (``recovered``)."""
    last_seq = max(record.last_seq, retained[-1].seq if retained else 0)
    expected = list(range(after_seq + 1, last_seq + 1))
    recovered = [e.seq for e in retained] == expected
    status = record.status
    for event in retained:
        if event.type.final:
            status = TaskStatus(event.data["status"])
    return Subscribed(task_id=record.id, status=status, last_seq=last_seq, recovered=recovered)


def _posts(webhook: Webhook | None, event_type: str) -> bool:
    """Does the task's webhook get events of this type (so that an ack skips one)?"""
    return webhook is not None and event_type in _TYPES and webhook.wants(EventType(event_type))


_TYPES = {t.value for t in EventType}


def _timestamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"not a frame this socket understands: {text}"[:300]


@websocket("/v1/ws", name="ws")
async def ws_endpoint(socket: WebSocket, state_: NamedDependency[ApiState]) -> None:  # type: ignore[type-arg]
    """Follow tasks live: see the WebSocket protocol in the README."""
    settings = state_.settings
    client = client_address(socket, trusted_proxies=settings.trust_forwarded)
    await socket.accept()
    if state_.ws_clients[client] >= settings.ws_max_per_client:
        await socket.close(code=CLOSE_TRY_AGAIN, reason="too many sockets from this address")
        return
    state_.ws_clients[client] += 1
    try:
        await _serve(socket, state_)
    finally:
        state_.ws_clients[client] -= 1
        if state_.ws_clients[client] <= 0:
            del state_.ws_clients[client]


def client_address(connection: ASGIConnection, *, trusted_proxies: int) -> str:  # type: ignore[type-arg]
    """Who is asking: the peer, or behind ``trusted_proxies`` proxies of your own, the X-Forwarded-For entry the
    outermost of them added.

    Each proxy appends the address it was connected from, so the last ``trusted_proxies`` entries are the trusted
    ones, and the first of those (``trusted_proxies`` from the right) is the client the outermost proxy saw. What
    stands to its left a client may have written itself. A request with fewer entries than that did not come
    through every trusted proxy: then none of its entries is trusted, and the peer is the client.
    """
    peer = connection.client.host if connection.client is not None else "unknown"
    if trusted_proxies <= 0:
        return peer
    # Several X-Forwarded-For headers are one list, in order (RFC 9110, 5.3).
    values = [v for k, v in connection.scope["headers"] if k.lower() == b"x-forwarded-for"]
    hops = [hop.strip() for value in values for hop in value.decode("latin-1").split(",")]
    if len(hops) < trusted_proxies:
        return peer
    client = hops[-trusted_proxies]
    return client[:64] if client else peer


async def _serve(socket: WebSocket, state_: ApiState) -> None:  # type: ignore[type-arg]
    settings = state_.settings
    connection = Connection(
        socket,
        hub=state_.hub,
        tasks=state_.tasks,
        events=state_.events,
        outbox=state_.outbox,
        places=state_.tenant_streams,
        ping_interval_s=settings.ws_ping_interval_s,
        ping_timeout_s=settings.ws_ping_timeout_s,
        idle_timeout_s=settings.ws_idle_timeout_s,
    )
    with contextlib.suppress(WebSocketDisconnect, OSError):
        await connection.run()
