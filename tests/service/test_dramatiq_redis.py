"""Relay's use of Dramatiq's private Redis broker internals matches the installed Dramatiq."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.redis import _scripts as redis_broker_scripts
from dramatiq.errors import ConnectionClosed

from delivery.redis_client import connect
from service.broker import ACTOR, QUEUE, RedisEnqueuer, task_message
from service.dramatiq_redis import (
    _DRAMATIQ_TIMESTAMP,
    ACK_BATCH,
    RelayRedisBroker,
    dispatch_args,
    fetched_key,
    message_for,
    queue_keys,
    wake_key,
)
from service.processes import free_port
from tests.conftest import RedisServer

# These drive the Dramatiq Redis broker in the storage Redis, whose keys sit beside Relay's and whose steps touch keys
# of several slots: on a Redis Cluster the broker is a Redis of its own, by design.
pytestmark = pytest.mark.standalone_only(
    "the Dramatiq Redis broker in the storage Redis (a cluster has a broker of its own)"
)

# A back-off far longer than any wait below: a consumer that slept it out would fail these tests.
LONG_TIMEOUT_MS = 20_000


def _broker(url: str) -> RedisBroker:
    broker = RedisBroker(url=url, heartbeat_timeout=10_000, maintenance_chance=0)
    broker.declare_queue(QUEUE)
    return broker


def test_dispatch_arguments_are_the_ones_dramatiq_passes(redis_url: str) -> None:
    broker = _broker(redis_url)
    seen: list[list[Any]] = []
    broker.scripts = {**broker.scripts, "dispatch": lambda *, args, keys: seen.append(list(args))}
    broker.do_qsize(QUEUE)
    (theirs,) = seen
    ours = dispatch_args(broker, "qsize", QUEUE, timestamp_ms=theirs[1], maintenance=bool(theirs[6]))
    # Every argument in the same place; only the chunk size may differ (Dramatiq reads it from Redis).
    assert len(ours) == len(theirs)
    assert [a for i, a in enumerate(ours) if i != 7] == [a for i, a in enumerate(theirs) if i != 7]
    assert isinstance(theirs[7], int)


def test_heartbeats_are_timed_by_redis_and_not_by_a_worker_whose_clock_runs_ahead(redis_url: str) -> None:
    assert _DRAMATIQ_TIMESTAMP in redis_broker_scripts["dispatch"]  # the line replaced is Dramatiq's still
    client = redis.Redis.from_url(redis_url)
    ahead, on_time = RelayRedisBroker(url=redis_url, heartbeat_timeout=10_000), RelayRedisBroker(url=redis_url)
    ahead.do_qsize(QUEUE)
    # The next maintenance comes from a host a minute ahead: by its own clock the other worker looks dead. Dramatiq
    # would requeue what that worker fetched; by Redis's clock it is alive.
    on_time.scripts["dispatch"](
        keys=[ahead.namespace],
        args=dispatch_args(ahead, "qsize", QUEUE, timestamp_ms=int((time.time() + 60) * 1000), maintenance=True),
    )
    seconds, micros = client.time()
    heartbeat = client.zscore(f"{ahead.namespace}:__heartbeats__", ahead.broker_id)
    assert heartbeat == pytest.approx(seconds * 1000 + micros // 1000, abs=5_000)
    ahead.close()
    on_time.close()
    client.close()


def test_an_inline_message_is_stored_as_the_broker_stores_one(redis_url: str) -> None:
    broker = _broker(redis_url)
    client = redis.Redis.from_url(redis_url)
    queue_key, messages_key = queue_keys(broker, QUEUE)
    theirs = broker.enqueue(task_message("task_a"))
    assert client.lrange(queue_key, 0, -1) == [theirs.options["redis_message_id"].encode()]
    message_id, body = message_for(QUEUE, ACTOR, "task_b")
    client.hset(messages_key, message_id, body)
    client.rpush(queue_key, message_id)
    # The broker's consumer reads both back the way it reads its own, fields and all.
    consumer = broker.consume(QUEUE, prefetch=2, timeout=100)
    got = [next(consumer) for _ in range(2)]
    assert [m.args for m in got] == [("task_a",), ("task_b",)]
    assert got[1].actor_name == ACTOR
    assert got[1].options == {"redis_message_id": message_id}
    assert set(got[1].asdict()) == set(got[0].asdict())
    assert abs(got[1].message_timestamp - got[0].message_timestamp) < 60_000
    assert all(isinstance(m, dramatiq.broker.MessageProxy) for m in got)
    consumer.close()
    client.close()


def test_acks_are_written_in_batches_where_dramatiq_keeps_them(redis_url: str) -> None:
    broker = RelayRedisBroker(url=redis_url, heartbeat_timeout=10_000, maintenance_chance=0)
    broker.declare_queue(QUEUE)
    client = redis.Redis.from_url(redis_url)
    _, messages_key = queue_keys(broker, QUEUE)
    n = ACK_BATCH + 10
    for i in range(n):
        broker.enqueue(task_message(f"task_{i}"))
    consumer = broker.consume(QUEUE, prefetch=n, timeout=100)
    got = [next(consumer) for _ in range(n)]
    # Dramatiq's own fetch put them in the set this consumer acks from.
    assert client.scard(fetched_key(broker, QUEUE)) == n
    for message in got:
        consumer.ack(message)
    assert client.hlen(messages_key) == n  # noted, not yet written
    assert next(consumer) is None  # the next look for messages writes a batch ...
    assert client.hlen(messages_key) == n - ACK_BATCH
    consumer.close()  # ... and closing writes the rest
    assert client.scard(fetched_key(broker, QUEUE)) == 0
    assert client.hlen(messages_key) == 0
    client.close()


def _relay_broker(url: str) -> RelayRedisBroker:
    broker = RelayRedisBroker(url=url, heartbeat_timeout=10_000, maintenance_chance=0)
    broker.declare_queue(QUEUE)
    return broker


def _enqueue(url: str, broker: RelayRedisBroker, task_ids: list[str]) -> None:
    async def enqueue() -> None:
        client = connect(url)
        try:
            await RedisEnqueuer(broker, client).enqueue(task_ids)
        finally:
            await client.aclose()

    asyncio.run(enqueue())


def test_an_idle_consumer_fetches_a_message_when_it_is_enqueued_not_after_its_back_off(redis_url: str) -> None:
    broker = _relay_broker(redis_url)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=LONG_TIMEOUT_MS)
    consumer.misses = 30  # long idle: its next wait is the whole back-off, 10 to 20 s
    woke: list[float] = []
    waiting = threading.Thread(target=lambda: woke.append(time.monotonic()) if next(consumer) is None else None)
    started = time.monotonic()
    waiting.start()
    time.sleep(0.3)  # the consumer is waiting by now
    _enqueue(redis_url, broker, ["task_a"])
    waiting.join(timeout=LONG_TIMEOUT_MS / 1000)

    assert woke, "the wait ended with a message it should not have had yet"
    assert woke[0] - started < LONG_TIMEOUT_MS / 1000 / 4  # woken by the enqueue, not at the back-off's end
    message = next(consumer)
    assert message is not None
    assert message.args == ("task_a",)
    consumer.close()


def test_a_consumer_that_finds_no_token_still_fetches_after_its_back_off(redis_url: str) -> None:
    # Dramatiq's own enqueue pushes no token: the consumer's wait times out and it fetches as before.
    broker = _relay_broker(redis_url)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=200)
    client = redis.Redis.from_url(redis_url)
    client.delete(wake_key(broker, QUEUE))
    broker.enqueue(task_message("task_b"))
    client.delete(wake_key(broker, QUEUE))
    got = [next(consumer) for _ in range(3)]
    assert [m.args for m in got if m is not None] == [("task_b",)]
    assert client.llen(wake_key(broker, QUEUE)) == 0
    consumer.close()
    client.close()


def test_the_sweepers_enqueue_leaves_one_token(redis_url: str) -> None:
    broker = _relay_broker(redis_url)
    for _ in range(3):
        _enqueue(redis_url, broker, ["task_c", "task_d"])
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue_keys(broker, QUEUE)[0]) == 6
    assert client.lrange(wake_key(broker, QUEUE), 0, -1) == [b"1"]
    client.close()


def test_a_wake_key_that_is_not_a_list_costs_the_wake_up_and_nothing_else(redis_url: str) -> None:
    broker = _relay_broker(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.set(wake_key(broker, QUEUE), "not a list")
    consumer = broker.consume(QUEUE, prefetch=4, timeout=100)
    assert next(consumer) is None  # waited by sleeping, not by raising out of the consumer
    broker.enqueue(task_message("task_e"))
    got = [next(consumer) for _ in range(3)]
    assert [m.args for m in got if m is not None] == [("task_e",)]
    consumer.close()
    client.close()


def test_a_consumer_with_a_timeout_of_a_millisecond_never_waits_for_ever(redis_url: str) -> None:
    # Its back-off rounds down to 0 ms, and a BLPOP of 0 s would block until the next enqueue.
    broker = _relay_broker(redis_url)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=1)
    answered: list[object] = []

    def idle() -> None:
        for _ in range(20):
            answered.append(next(consumer))

    thread = threading.Thread(target=idle, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        redis.Redis.from_url(redis_url).rpush(wake_key(broker, QUEUE), "1")  # let it go before failing
        thread.join(timeout=5)
    assert answered == [None] * 20
    consumer.close()


def test_the_sweepers_enqueue_succeeds_with_a_wake_key_that_is_not_a_list(redis_url: str) -> None:
    broker = _relay_broker(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.set(wake_key(broker, QUEUE), "not a list")
    _enqueue(redis_url, broker, ["task_f"])  # raises if the wake key's error were this call's
    assert client.llen(queue_keys(broker, QUEUE)[0]) == 1
    client.close()


def test_a_stalled_redis_closes_the_consumer_as_a_lost_connection_does(
    redis_url: str, redis_server: RedisServer
) -> None:
    # Dramatiq restarts a consumer that raises ConnectionClosed; anything else it logs with a traceback.
    broker = _relay_broker(f"{redis_url}?socket_timeout=0.5")
    consumer = broker.consume(QUEUE, prefetch=4, timeout=100)
    assert next(consumer) is None
    redis_server.freeze()
    try:
        with pytest.raises(ConnectionClosed):
            next(consumer)  # its fetch, or its wait on the wake list, times out
    finally:
        redis_server.thaw()
    consumer.close()


def test_a_redis_that_refuses_writes_closes_the_consumer_as_a_lost_connection_does(
    redis_url: str, redis_server: RedisServer
) -> None:
    # A read-only replica after a failover (here: a replica of a loopback port where nothing listens).
    broker = _relay_broker(redis_url)
    consumer = broker.consume(QUEUE, prefetch=4, timeout=100)
    assert next(consumer) is None
    admin = redis.Redis.from_url(redis_url)
    admin.replicaof("127.0.0.1", str(free_port()))
    try:
        with pytest.raises(ConnectionClosed):
            next(consumer)  # its fetch script writes: READONLY
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
    consumer.close()
