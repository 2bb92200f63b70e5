"""Replaying dead letters, against a real Redis: the same event is owed again on a fresh schedule, once, and its
dead letter goes when that delivery succeeds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.dead_letters import DeadLetterStore
from delivery.destinations import FlowSettings
from delivery.outbox import Lease, Outbox, Recorded, trim_dead_letter_index, webhook_attempt
from delivery.policy import Decision, Verdict
from delivery.records import PendingDelivery
from delivery.redis_client import connect
from schemas.dead_letters import DeadLetter, DeadLetterReason
from schemas.events import Event, EventType
from tests.placed import event_id, home, task_id

FLOW = FlowSettings(lease_s=30.0, retry_span_s=600.0)
URL = "http://127.0.0.1:9/hook"
GONE = Decision(Verdict.DEAD, reason=DeadLetterReason.ENDPOINT_GONE)


@pytest.fixture
def outbox(redis: aioredis.Redis) -> Outbox:
    return Outbox(redis=redis, flow=FLOW, attempts_ttl_s=3600, dead_letter_retention_s=3600)


@pytest.fixture
def store(redis: aioredis.Redis, outbox: Outbox) -> DeadLetterStore:
    return DeadLetterStore(redis=redis, outbox=outbox)


async def attempt(outbox: Outbox, lease: Lease, status: int, decision: Decision) -> Recorded:
    made = webhook_attempt(
        lease.delivery,
        at=datetime.now(UTC),
        status_code=status,
        error=None if status < 300 else f"HTTP {status}",
        duration_ms=1.0,
        delivered=status < 300,
    )
    return await outbox.record(lease.delivery, made, decision, token=lease.token)


def evt(n: int) -> str:
    """The id of task ``n``'s final event (the task placed by its webhook's destination, as Relay places it)."""
    return event_id(f"evt_{n}", task_id(f"task_{n}", "acme", URL))


async def dead_letter(redis: aioredis.Redis, outbox: Outbox, n: int = 1) -> DeadLetter:
    """Event ``evt(n)``'s webhook, answered 410 on its first attempt."""
    event = Event(
        id=evt(n),
        type=EventType.COMPLETED,
        task_id=task_id(f"task_{n}", "acme", URL),
        seq=1,
        created_at=datetime.now(UTC),
        data={"status": "succeeded", "result": n},
    )
    delivery = PendingDelivery(tenant="acme", task_id=event.task_id, url=URL, event=event)
    await redis.set(keys.delivery(event.id), msgspec.json.encode(delivery))
    lease = await outbox.handoff(delivery)
    assert lease is not None
    dead = (await attempt(outbox, lease, 410, GONE)).dead
    assert dead is not None
    return dead


async def replayed_lease(outbox: Outbox) -> Lease:
    """What a worker does with a replay: claim it from the schedule and hand it to its destination."""
    ((delivery, pushed),) = await outbox.claim(home("acme", URL), limit=10)
    assert not pushed
    lease = await outbox.handoff(delivery)
    assert lease is not None
    return lease


async def test_a_replay_owes_the_same_event_again_on_a_fresh_schedule_once(
    redis: aioredis.Redis, outbox: Outbox, store: DeadLetterStore
) -> None:
    dead = await dead_letter(redis, outbox)
    assert await store.get(dead.id) == dead
    before = time.time()

    assert await store.replay(dead)
    assert not await store.replay(dead)  # in flight already

    due_at = await redis.zscore(home("acme", URL).due, evt(1))
    assert due_at is not None
    assert before <= due_at <= time.time()
    assert await redis.zcard(home("acme", URL).due) == 1
    owed = msgspec.json.decode(await redis.get(keys.delivery(evt(1))), type=PendingDelivery)
    assert owed.event == dead.event
    assert owed.run_attempts == 0  # the whole retry schedule again
    assert owed.attempts == 1  # the count across replays goes on
    assert owed.dead_letter_id == dead.id
    assert await redis.hget(home("acme", URL).stats, metrics.REPLAYED) == b"1"
    assert await store.get(dead.id) == dead  # kept until the replay is delivered


async def test_a_delivered_replay_takes_its_dead_letter_away(
    redis: aioredis.Redis, outbox: Outbox, store: DeadLetterStore
) -> None:
    dead = await dead_letter(redis, outbox)
    await store.replay(dead)

    await attempt(outbox, await replayed_lease(outbox), 200, Decision(Verdict.DELIVERED))

    assert await store.get(dead.id) is None
    assert await redis.zcard(home("acme", URL).dead_letters) == 0
    assert await redis.zcard(home("acme", URL).dead_letters_of("acme")) == 0
    assert not await redis.exists(keys.dead_letter_of_event(evt(1)))
    assert not await redis.exists(keys.delivery(evt(1)))
    assert await store.replay(dead)  # nothing in flight: a replay may be asked for again


async def test_a_replay_that_dies_again_keeps_one_dead_letter_and_counts_the_replay(
    redis: aioredis.Redis, outbox: Outbox, store: DeadLetterStore
) -> None:
    dead = await dead_letter(redis, outbox)
    await store.replay(dead)

    again = (await attempt(outbox, await replayed_lease(outbox), 410, GONE)).dead

    assert again is not None
    assert again.id == dead.id
    assert again.replays == 1
    assert again.attempts == 2
    assert await redis.zcard(home("acme", URL).dead_letters) == 1
    assert await store.get(dead.id) == again


async def test_two_replays_of_one_dead_letter_at_once_owe_it_once(
    redis: aioredis.Redis, redis_url: str, outbox: Outbox, store: DeadLetterStore
) -> None:
    dead = await dead_letter(redis, outbox)
    other = connect(redis_url)
    try:
        results = await asyncio.gather(
            store.replay(dead), DeadLetterStore(redis=other, outbox=outbox).replay(dead), store.replay(dead)
        )
    finally:
        await other.aclose()
    assert sorted(results) == [False, False, True]
    assert await redis.zcard(home("acme", URL).due) == 1
    assert await redis.hget(home("acme", URL).stats, metrics.REPLAYED) == b"1"


async def test_a_batch_replays_all_but_those_in_flight(
    redis: aioredis.Redis, outbox: Outbox, store: DeadLetterStore
) -> None:
    batch = [await dead_letter(redis, outbox, n) for n in (1, 2, 3)]
    assert await store.replay(batch[1])

    assert await store.replay_batch(batch) == [True, False, True]
    assert {m.decode() for m in await redis.zrange(home("acme", URL).due, 0, -1)} == {evt(1), evt(2), evt(3)}
    assert await redis.hget(home("acme", URL).stats, metrics.REPLAYED) == b"3"


async def test_the_index_of_dead_letters_is_trimmed_past_their_retention_by_redis_clock(redis: aioredis.Redis) -> None:
    seconds, _ = await redis.time()
    partition = keys.partitions()[0]
    day_ms = 86_400_000
    await redis.zadd(
        partition.dead_letters, {"dl_old": (seconds - 3 * 86_400) * 1000, "dl_new": seconds * 1000 - day_ms}
    )
    # Kept two days: the first is past that by Redis's clock, whatever the clock of the worker that trims.
    assert await trim_dead_letter_index(redis, partition, retention_s=2 * 86_400) == 1
    assert await redis.zrange(partition.dead_letters, 0, -1) == [b"dl_new"]
    assert await trim_dead_letter_index(redis, partition, retention_s=2 * 86_400, now=seconds + 2 * 86_400) == 1
