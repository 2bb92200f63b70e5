"""The live hub in-process, against a real Redis's pub/sub: each socket gets the events of the tasks it follows and
no others, stops getting them when it unfollows, says where it is in the presence keys, and is asked to catch up
after the subscription was lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.destinations import FlowSettings
from delivery.redis_batch import batched
from delivery.redis_client import connect
from schemas.events import Event, EventType
from schemas.tasks import TaskRecord, TaskStatus
from service.api.live import EventHead, LiveHub, event_frame
from service.tasks.ledger import TaskLedger
from service.tasks.store import TaskStore

if TYPE_CHECKING:
    from tests.conftest import RedisServer

PRESENCE_TTL_S = 30


class Socket:
    """A follower that keeps what the hub hands it."""

    def __init__(self, *tasks: str) -> None:
        self.tasks = set(tasks)
        self.heads: list[EventHead] = []
        self.frames: list[bytes] = []
        self.resyncs = 0

    def offer(self, head: EventHead, frame: bytes) -> None:
        self.heads.append(head)
        self.frames.append(frame)

    def resync(self) -> None:
        self.resyncs += 1

    def heartbeat(self, now: float) -> None:
        pass

    def followed_tasks(self) -> Iterable[str]:
        return self.tasks

    @property
    def event_ids(self) -> list[str]:
        return [h.id for h in self.heads]


@pytest.fixture
async def hub(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[LiveHub]:
    listener = connect(redis_url, max_connections=2, retries=0)  # as the API builds its listener
    live = LiveHub(redis=redis, listen_redis=listener, presence_ttl_s=PRESENCE_TTL_S)
    await live.start()
    await subscribed(live, redis)
    yield live
    await live.stop()
    await listener.aclose()


async def until(predicate: Callable[[], object], *, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def subscribed(hub: LiveHub, redis: aioredis.Redis) -> None:
    """The hub's pattern subscription is in place on the server (not merely sent)."""
    await asyncio.wait_for(hub.connected.wait(), 5)
    deadline = time.monotonic() + 5
    while await redis.pubsub_numpat() < 1:
        assert time.monotonic() < deadline, "the hub never subscribed"
        await asyncio.sleep(0.01)


async def follow(hub: LiveHub, socket: Socket) -> None:
    hub.attach(socket)
    for task_id in socket.tasks:
        await hub.follow(task_id, socket)


def event(task_id: str, seq: int) -> bytes:
    return msgspec.json.encode(
        Event(
            id=f"evt_{task_id}_{seq}",
            type=EventType.PROGRESS,
            task_id=task_id,
            seq=seq,
            created_at=datetime.now(UTC),
            data={"percent": seq},
        )
    )


async def publish(redis: aioredis.Redis, task_id: str, seq: int) -> bytes:
    body = event(task_id, seq)
    await redis.publish(keys.task_channel(task_id), body)
    return body


async def test_a_socket_gets_its_tasks_events_and_not_another_tasks(hub: LiveHub, redis: aioredis.Redis) -> None:
    one, two = Socket("task_1"), Socket("task_2")
    await follow(hub, one)
    await follow(hub, two)

    first = await publish(redis, "task_1", 1)
    second = await publish(redis, "task_2", 1)
    await until(lambda: two.frames)  # one subscription, in order: task_1's event was handed out before

    assert one.frames == [event_frame(first)]
    assert two.frames == [event_frame(second)]
    assert msgspec.json.decode(one.frames[0])["event"] == msgspec.json.decode(first)
    assert (one.heads[0].task_id, one.heads[0].seq) == ("task_1", 1)


async def test_an_event_a_run_writes_reaches_the_socket_following_its_task(hub: LiveHub, redis: aioredis.Redis) -> None:
    flow = FlowSettings(lease_s=35.0, retry_span_s=60.0)
    tasks = TaskStore(redis=redis, record_ttl_s=3600, retention_s=600, flow=flow)
    record = TaskRecord(
        id="task_1", kind="echo", status=TaskStatus.QUEUED, input=None, created_at=datetime.now(UTC), tenant="acme"
    )
    await tasks.create(record, idempotency_key=None)
    assert (await TaskLedger(redis=redis).start("task_1", "run-a")).record is not None
    socket = Socket("task_1")
    await follow(hub, socket)

    progress = tasks.progress_event(record, 50, "half")
    await tasks.append_progress(record, "run-a", progress)
    await until(lambda: socket.frames)

    assert socket.event_ids == [progress.id]
    assert msgspec.json.decode(socket.frames[0]) == {"type": "event", "event": msgspec.to_builtins(progress)}


async def test_an_unfollowed_task_sends_nothing_more_and_its_presence_goes(hub: LiveHub, redis: aioredis.Redis) -> None:
    leaving, staying, other = Socket("task_1"), Socket("task_1"), Socket("task_2")
    for socket in (leaving, staying, other):
        await follow(hub, socket)
    members = await redis.smembers(keys.subscribers("task_1"))
    assert len(members) == 1  # this node, once for both sockets
    assert 0 < await redis.ttl(keys.subscribers("task_1")) <= PRESENCE_TTL_S

    hub.unfollow("task_1", leaving)
    await publish(redis, "task_1", 1)
    await until(lambda: staying.frames)
    assert leaving.frames == []
    assert await redis.smembers(keys.subscribers("task_1")) == members  # another local socket follows it

    hub.unfollow("task_1", staying)
    await publish(redis, "task_1", 2)
    await publish(redis, "task_2", 1)
    await until(lambda: other.frames)
    assert staying.event_ids == ["evt_task_1_1"]
    deadline = time.monotonic() + 5
    while await redis.exists(keys.subscribers("task_1")):
        assert time.monotonic() < deadline, "the node never left the presence set"
        await asyncio.sleep(0.01)
    assert await redis.smembers(keys.subscribers("task_2")) == members


async def test_an_unreadable_message_is_skipped_and_the_next_event_arrives(hub: LiveHub, redis: aioredis.Redis) -> None:
    socket = Socket("task_1")
    await follow(hub, socket)

    await redis.publish(keys.task_channel("task_1"), b"{not json")
    good = await publish(redis, "task_1", 1)
    await until(lambda: socket.frames)

    assert socket.frames == [event_frame(good)]


async def test_after_a_redis_restart_every_socket_is_asked_to_catch_up(
    hub: LiveHub, redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    following, idle = Socket("task_1"), Socket()
    await follow(hub, following)
    await follow(hub, idle)
    assert (following.resyncs, idle.resyncs) == (0, 0)

    redis_server.stop()
    await until(lambda: not hub.connected.is_set())
    redis_server.start()
    await until(lambda: following.resyncs and idle.resyncs)
    await subscribed(hub, redis)

    assert (following.resyncs, idle.resyncs) == (1, 1)
    await publish(redis, "task_1", 1)
    await until(lambda: following.frames)
    assert following.event_ids == ["evt_task_1_1"]


async def test_a_dropped_subscription_that_comes_back_at_once_still_asks_sockets_to_catch_up(
    hub: LiveHub, redis: aioredis.Redis
) -> None:
    socket = Socket("task_1")
    await follow(hub, socket)

    assert await redis.client_kill_filter(_type="pubsub") == 1
    await publish(redis, "task_1", 1)  # nobody is subscribed: only the task's log has it
    await until(lambda: socket.resyncs, timeout_s=2)

    await subscribed(hub, redis)
    await publish(redis, "task_1", 2)
    await until(lambda: socket.frames)
    assert socket.event_ids == ["evt_task_1_2"]


async def test_a_stream_gets_its_tasks_events_but_never_counts_as_present(hub: LiveHub, redis: aioredis.Redis) -> None:
    """A stream cannot ack: were it in the presence set, a delivery would wait for an ack that never comes."""
    stream, socket = Socket("task_1"), Socket("task_1")
    hub.attach(stream)
    await hub.follow("task_1", stream, presence=False)
    assert await redis.smembers(keys.subscribers("task_1")) == set()

    body = await publish(redis, "task_1", 1)
    await until(lambda: stream.frames)
    assert stream.frames == [event_frame(body)]

    await follow(hub, socket)  # a socket then follows it too, and leaves: the stream keeps getting its events
    assert len(await redis.smembers(keys.subscribers("task_1"))) == 1
    hub.unfollow("task_1", socket)
    deadline = time.monotonic() + 5
    while await redis.smembers(keys.subscribers("task_1")):
        assert time.monotonic() < deadline, "the node never left the presence set"
        await asyncio.sleep(0.01)
    await publish(redis, "task_1", 2)
    await until(lambda: len(stream.frames) == 2)


async def test_a_task_followed_again_while_the_hub_leaves_it_stays_present(hub: LiveHub, redis: aioredis.Redis) -> None:
    # A closing socket leaves its tasks in batches of 500; another socket subscribes to some of them again
    # meanwhile (a reload of the page, say). Those must keep this node's member, or their webhooks stop waiting
    # for acks.
    tasks = [f"task_{i:04d}" for i in range(600)]
    closing = Socket(*tasks)
    await follow(hub, closing)
    # Present everywhere, read all at once (which also leaves the client many connections, as a busy API has:
    # its trips then truly run side by side).
    assert all(await asyncio.gather(*(redis.sismember(keys.subscribers(t), hub._node) for t in tasks)))
    hub.detach(closing)
    for task_id in tasks:
        hub.unfollow(task_id, closing)
    await asyncio.sleep(0)  # the leaver has worked out what to leave and queued its first batch
    reloaded = Socket(*tasks[-100:])
    hub.attach(reloaded)
    batcher = batched(redis)
    await asyncio.gather(
        *(batcher.commands(*hub.start_following(t, reloaded), ("LRANGE", keys.events(t), 0, -1)) for t in tasks[-100:])
    )  # subscribed as the socket does: presence, then the log, in one trip
    await until(lambda: hub._leaver is not None and hub._leaver.done())

    members = await asyncio.gather(*(redis.smembers(keys.subscribers(t)) for t in tasks))
    present = {t for t, m in zip(tasks, members, strict=True) if m}
    assert present == set(tasks[-100:])
