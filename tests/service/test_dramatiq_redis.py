"""Relay's use of Dramatiq's private Redis broker internals matches the installed Dramatiq."""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from service.broker import ACTOR, QUEUE, task_message
from service.dramatiq_redis import (
    ACK_BATCH,
    RelayRedisBroker,
    dispatch_args,
    fetched_key,
    message_for,
    queue_keys,
)


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
