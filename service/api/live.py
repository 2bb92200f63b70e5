"""The live side of one API process: every task's events, from Redis pub/sub to the sockets that follow them.

One pattern subscription (``relay:live:*``) per process receives every event any worker publishes; the hub
hands each to the local followers of its task: WebSockets and Server-Sent Event streams. It also keeps the presence
key of each task a WebSocket follows fresh (so workers know a socket somewhere may ack; a stream never acks, so it
is not counted there) and drives every follower's heartbeat from one timer.
If the pub/sub connection drops, events published meanwhile were not received: after reconnecting, the hub
asks every socket to read what it missed from the task's log, so nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import background, keys
from delivery.redis_batch import ScriptBatcher, batched
from schemas.events import Event
from service.api.live_sharded import ShardedListener

log = logging.getLogger("relay.live")

# How long to wait before reconnecting a dropped pub/sub connection: doubling after each failed attempt, up to
# the most (a Redis that stays away is asked twice a second at first, then every few seconds, not on and on).
RECONNECT_DELAY_S = 0.5
RECONNECT_MAX_DELAY_S = 4.0
# While Redis stays away, a failed attempt is said again at WARNING this often (the others at DEBUG).
RECONNECT_WARN_EVERY = 15
# How often the hub looks at every socket's heartbeat, at most: a quarter of the ping interval or timeout when
# that is shorter, so that a ping is late by at most a quarter interval (a tick as long as the interval would
# let a ping slip to the next tick, twice the interval).
MAX_HEARTBEAT_TICK_S = 1.0
MIN_HEARTBEAT_TICK_S = 0.05


def heartbeat_tick_s(ping_interval_s: float, ping_timeout_s: float) -> float:
    return max(MIN_HEARTBEAT_TICK_S, min(MAX_HEARTBEAT_TICK_S, ping_interval_s / 4, ping_timeout_s / 4))


_LIVE_INFIX = keys.LIVE_INFIX.encode()


class EventHead(msgspec.Struct):
    """The few fields of a published event the hub needs (the rest passes through untouched)."""

    id: str
    seq: int
    type: str
    task_id: str
    created_at: str


_decode_head = msgspec.json.Decoder(EventHead).decode


def stored_event(event: Event) -> tuple[EventHead, bytes]:
    """An Event read from the log as the hub hands on a published one: its head and its encoded body."""
    head = EventHead(
        id=event.id,
        seq=event.seq,
        type=event.type.value,
        task_id=event.task_id,
        created_at=event.created_at.isoformat(),
    )
    return head, msgspec.json.encode(event)


class Follower(Protocol):
    """A socket or a stream as the hub sees it."""

    def offer(self, head: EventHead, frame: bytes) -> None: ...

    def resync(self) -> None: ...

    def heartbeat(self, now: float) -> None: ...

    def followed_tasks(self) -> Iterable[str]: ...

    def store_lost(self) -> None: ...


_FRAME_HEAD = b'{"type":"event","event":'


def event_frame(body: bytes) -> bytes:
    """The ``event`` frame around an encoded Event, without decoding it."""
    return _FRAME_HEAD + body + b"}"


def event_body(frame: bytes) -> bytes:
    """The encoded Event inside an ``event`` frame (the inverse of :func:`event_frame`)."""
    return frame[len(_FRAME_HEAD) : -1]


class LiveHub:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        presence_ttl_s: float,
        listen_redis: aioredis.Redis | None = None,
        tick_s: float = MAX_HEARTBEAT_TICK_S,
        sharded: Callable[[LiveHub], ShardedListener] | None = None,
    ) -> None:
        self._redis = redis
        self._tick_s = tick_s
        # The pub/sub connection blocks while nothing is published: it needs a client without a command timeout.
        self._listen_redis = listen_redis or redis
        self._presence_ttl_s = max(1, int(presence_ttl_s))
        self._followers: dict[str, set[Follower]] = {}
        self._present: dict[str, set[Follower]] = {}  # the followers of each task that count for its presence key
        self._sockets: set[Follower] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._node = uuid.uuid4().hex  # this process's member in each followed task's presence set
        self._leaving: set[str] = set()  # tasks no local socket follows any more: leave their presence sets
        self._leaver: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.received = 0  # live events received by the pattern subscription (standalone)
        # On a cluster: sharded subscriptions, one per task followed here (see service.api.live_sharded).
        self._sharded = sharded(self) if sharded is not None else None
        self._dropping: set[str] = set()
        self._dropper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._tick(), name="relay-live-heartbeat")]
        if self._sharded is None:
            self._tasks.append(asyncio.create_task(self._listen(), name="relay-live-listen"))
        else:
            self.connected.set()  # each subscription is made, and waited for, as a task is followed

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await background.stop(task)
        self._tasks = []
        if self._sharded is not None:
            await background.stop(self._dropper)
            await self._sharded.close()

    @functools.cached_property
    def _batch(self) -> ScriptBatcher:
        return batched(self._redis)

    @property
    def sockets(self) -> int:
        return len(self._sockets)

    def attach(self, socket: Follower) -> None:
        self._sockets.add(socket)

    def detach(self, socket: Follower) -> None:
        self._sockets.discard(socket)

    def store_lost(self) -> None:
        """The store lost its data (see :mod:`delivery.epoch`): the tasks every follower waits on are gone, and no
        event of theirs will come. Tell each follower, which then ends, so that no client waits for nothing."""
        for socket in list(self._sockets):
            socket.store_lost()

    async def follow(self, task_id: str, socket: Follower, *, presence: bool = True) -> None:
        """Start handing ``task_id``'s events to ``socket``; with ``presence``, say so in the task's presence key
        (a follower that may ack: a delivery then waits for its ack before the webhook goes out)."""
        if presence:
            await self._batch.commands(*self.start_following(task_id, socket))
        else:
            self._followers.setdefault(task_id, set()).add(socket)
        await self.listening(task_id)

    async def listening(self, task_id: str) -> None:
        """Returns once this node receives ``task_id``'s live events (at once but on a cluster, where the task's
        channel is subscribed on its master first): a follower reads the task's log after this, so that no event
        falls between the two."""
        if self._sharded is not None and task_id in self._followers:
            self._dropping.discard(task_id)
            await self._sharded.subscribe(keys.task_channel(task_id))

    def start_following(self, task_id: str, socket: Follower) -> list[tuple[Any, ...]]:
        """Hand ``task_id``'s events to ``socket`` from now on, as a follower that may ack; the commands that say
        so in the task's presence key, for the caller to send before it reads the task's log (in the same trip,
        say: :meth:`EventLog.events_after` ``first``)."""
        self._followers.setdefault(task_id, set()).add(socket)
        self._present.setdefault(task_id, set()).add(socket)
        return self._presence_commands(task_id)

    def _presence_commands(self, task_id: str) -> list[tuple[Any, ...]]:
        key = keys.subscribers(task_id)
        return [("SADD", key, self._node), ("EXPIRE", key, self._presence_ttl_s)]

    def unfollow(self, task_id: str, socket: Follower) -> None:
        followers = self._followers.get(task_id)
        if followers is None:
            return
        followers.discard(socket)
        if not followers:
            del self._followers[task_id]
            if self._sharded is not None:
                self._dropping.add(task_id)
                if self._dropper is None or self._dropper.done():
                    self._dropper = asyncio.create_task(self._drop(), name="relay-live-drop")
        present = self._present.get(task_id)
        if present is None:
            return
        present.discard(socket)
        if not present:
            del self._present[task_id]
            self._leaving.add(task_id)
            if self._leaver is None or self._leaver.done():
                self._leaver = asyncio.create_task(self._leave(), name="relay-live-leave")

    async def _leave(self) -> None:
        """Leave presence sets in pipelined batches: one connection however many tasks a closing socket followed
        (a task each would take as many connections from the pool at once, and exhaust it)."""
        while self._leaving:
            task_ids = list(self._leaving)
            self._leaving.clear()
            for start in range(0, len(task_ids), 500):
                # Asked again for each batch: a task followed again while the batches before it went out stays.
                batch = [t for t in task_ids[start : start + 500] if t not in self._present]
                if not batch:
                    continue
                try:
                    await self._batch.commands(*(("SREM", keys.subscribers(t), self._node) for t in batch))
                    # Followed again while this batch was out: that follow's SADD may have run before this SREM
                    # (another trip, another connection), so say it again.
                    back = [t for t in batch if t in self._present]
                    if back:
                        await self._batch.commands(*(c for t in back for c in self._presence_commands(t)))
                except (RedisError, OSError) as exc:  # the members expire with their keys anyway
                    log.warning("leaving the presence sets of %d tasks failed: %s", len(batch), exc)

    async def _drop(self) -> None:
        """Stop listening to the tasks nobody here follows any more (a sharded subscription each)."""
        assert self._sharded is not None
        while self._dropping:
            task_id = self._dropping.pop()
            if task_id not in self._followers:
                try:
                    await self._sharded.unsubscribe(keys.task_channel(task_id))
                except (RedisError, OSError) as exc:
                    log.debug("dropping the live subscription of %s failed: %s", task_id, exc)

    def resync_channels(self, channels: Iterable[bytes]) -> None:
        """Live events of these channels may have been missed: their followers read them from the log."""
        tasks = {channel.rpartition(_LIVE_INFIX)[2].decode() for channel in channels}
        for socket in list(self._sockets):
            if tasks.intersection(socket.followed_tasks()):
                socket.resync()

    @property
    def events_received(self) -> int:
        """Live events this process has received from Redis (on a cluster, only its followed tasks')."""
        return self.received if self._sharded is None else self._sharded.received

    @property
    def tasks_followed(self) -> int:
        return len(self._followers)

    async def _listen(self) -> None:
        first = True
        failures = 0
        while True:
            pubsub = self._listen_redis.pubsub()
            try:
                await pubsub.psubscribe(keys.LIVE_PATTERN)
                self.connected.set()
                if failures:
                    log.info("live event subscription back after %d failed attempts", failures)
                failures = 0
                if not first:
                    for socket in list(self._sockets):
                        socket.resync()
                first = False
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        self.received += 1
                        self.dispatch(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                failures += 1
                delay_s = min(RECONNECT_MAX_DELAY_S, RECONNECT_DELAY_S * 2 ** (failures - 1))
                said = log.warning if failures % RECONNECT_WARN_EVERY == 1 else log.debug
                said("live event subscription lost (%s); reconnecting in %g s", exc, delay_s)
                await asyncio.sleep(delay_s)
            except Exception:
                # A bug here must not end live delivery for every socket of this node: log it and listen again.
                self.connected.clear()
                log.exception("live event subscription failed; reconnecting")
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def dispatch(self, channel: bytes, body: bytes) -> None:
        task_id = channel.rpartition(_LIVE_INFIX)[2].decode()
        followers = self._followers.get(task_id)
        if not followers:
            return
        try:
            head = _decode_head(body)
        except msgspec.DecodeError:
            log.warning("ignored an unreadable event on %s", channel)
            return
        frame = event_frame(body)
        for socket in list(followers):
            socket.offer(head, frame)

    async def _tick(self) -> None:
        refreshed_at = 0.0
        while True:
            await asyncio.sleep(self._tick_s)
            now = time.monotonic()
            for socket in list(self._sockets):
                socket.heartbeat(now)
            if now - refreshed_at >= self._presence_ttl_s / 3:
                refreshed_at = now
                try:
                    await self._refresh_presence()
                except (RedisError, OSError) as exc:
                    log.warning("refreshing presence keys failed: %s", exc)

    async def _refresh_presence(self) -> None:
        task_ids = list(self._present)
        for start in range(0, len(task_ids), 500):
            await self._batch.commands(*(c for t in task_ids[start : start + 500] for c in self._presence_commands(t)))
