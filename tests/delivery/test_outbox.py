"""The webhook schedule's steps, against a real Redis: claims of due work by several workers at once, a socket's
ack, the hand-off of a replay to its destination, and outcomes written under a lease that is no longer theirs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.destinations import FlowSettings, destination_for
from delivery.outbox import Lease, Outbox, Recorded, webhook_attempt
from delivery.policy import Decision, Verdict
from delivery.records import PendingDelivery
from delivery.redis_client import connect
from schemas.dead_letters import DeadLetterReason
from schemas.deliveries import Attempt, DeliveryOutcome
from schemas.events import Event, EventType
from tests.placed import event_id, home, task_id, url_in

FLOW = FlowSettings(lease_s=30.0, retry_span_s=600.0)
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
async def other_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A second worker's connection."""
    client = connect(redis_url)
    yield client
    await client.aclose()


def new_outbox(redis: aioredis.Redis) -> Outbox:
    return Outbox(redis=redis, flow=FLOW, attempts_ttl_s=3600, dead_letter_retention_s=3600)


@pytest.fixture
def outbox(redis: aioredis.Redis) -> Outbox:
    return new_outbox(redis)


def evt(n: int, url: str = URL) -> str:
    """The id of the final event of task ``n``, whose webhook goes to ``url``."""
    return event_id(f"evt_{n}", task_id(f"task_{n}", "acme", url))


def pending(n: int, *, url: str | None = URL) -> PendingDelivery:
    """Task ``n``'s final event, owed to ``url`` (placed with URL's destination when there is none)."""
    task = task_id(f"task_{n}", "acme", url or URL)
    event = Event(
        id=event_id(f"evt_{n}", task),
        type=EventType.COMPLETED,
        task_id=task,
        seq=1,
        created_at=datetime.now(UTC),
        data={"status": "succeeded", "result": n},
    )
    return PendingDelivery(tenant="acme", task_id=event.task_id, url=url, event=event)


async def stage(redis: aioredis.Redis, deliveries: list[PendingDelivery], *, due_at: float) -> None:
    """Deliveries in the general schedule, due at ``due_at`` (as a replay or a push waiting for its ack)."""
    for delivery in deliveries:
        await redis.set(keys.delivery(delivery.event_id), msgspec.json.encode(delivery))
        await redis.zadd(keys.of(delivery.event_id).due, {delivery.event_id: due_at})


async def attempts(redis: aioredis.Redis, task_id: str) -> list[Attempt]:
    return [msgspec.json.decode(raw, type=Attempt) for raw in await redis.lrange(keys.attempts(task_id), 0, -1)]


async def record(outbox: Outbox, lease: Lease, status: int, decision: Decision) -> Recorded:
    attempt = webhook_attempt(
        lease.delivery,
        at=datetime.now(UTC),
        status_code=status,
        error=None if status < 300 else f"HTTP {status}",
        duration_ms=1.0,
        delivered=status < 300,
    )
    return await outbox.record(lease.delivery, attempt, decision, token=lease.token)


async def test_two_workers_claiming_at_once_get_each_due_delivery_once(
    redis: aioredis.Redis, other_redis: aioredis.Redis, outbox: Outbox
) -> None:
    now = time.time()
    await stage(redis, [pending(n) for n in range(50)], due_at=now - 1)
    await stage(redis, [pending(n) for n in range(50, 55)], due_at=now + 10)  # not due yet

    first, second = await asyncio.gather(
        outbox.claim(home("acme", URL), limit=30), new_outbox(other_redis).claim(home("acme", URL), limit=30)
    )

    a = [d.event_id for d, _ in first]
    b = [d.event_id for d, _ in second]
    assert sorted([len(a), len(b)]) == [20, 30]
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == {evt(n) for n in range(50)}
    assert await outbox.claim(home("acme", URL), limit=100) == []  # leased: nobody else gets them meanwhile
    # A worker that died holding them only delays them: after the lease they come back, with the later ones.
    # (Counted from after the claims: on a busy box staging and claiming can take more than a second.)
    back = await outbox.claim(home("acme", URL), limit=100, now=max(time.time(), now + 10) + FLOW.lease_s + 1)
    assert {d.event_id for d, _ in back} == {evt(n) for n in range(55)}


async def test_two_workers_claiming_destinations_at_once_get_each_webhook_once(
    redis: aioredis.Redis, other_redis: aioredis.Redis, outbox: Outbox
) -> None:
    now = time.time()
    # Four destinations, in one partition (that the claims below go through).
    urls = [url_in(home("acme", URL), "acme", "http://receiver{}.test/hook", skip=k) for k in range(4)]
    for n in range(40):
        delivery = pending(n, url=urls[n % 4])
        await redis.set(keys.delivery(delivery.event_id), msgspec.json.encode(delivery))
        lease = await outbox.handoff(delivery)
        assert lease is not None
        await outbox.record(lease.delivery, None, Decision(Verdict.RETRY, delay_s=5), token=lease.token, now=now)

    first, second = await asyncio.gather(
        outbox.claim_destinations(home("acme", URL), limit=25, now=now + 6),
        new_outbox(other_redis).claim_destinations(home("acme", URL), limit=25, now=now + 6),
    )

    a = [lease.delivery.event_id for lease in first]
    b = [lease.delivery.event_id for lease in second]
    assert sorted([len(a), len(b)]) == [15, 25]
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == {evt(n, urls[n % 4]) for n in range(40)}
    assert await outbox.claim_destinations(home("acme", URL), limit=100, now=now + 7) == []


async def test_an_ack_in_time_settles_the_push_and_no_webhook_is_sent(redis: aioredis.Redis, outbox: Outbox) -> None:
    delivery = pending(1)
    due_at = time.time() + 10
    await stage(redis, [delivery], due_at=due_at)
    await redis.set(keys.ack_marker(delivery.event_id), "1")

    settled = await outbox.ack(
        tenant="acme",
        event_id=delivery.event_id,
        task_id=delivery.task_id,
        created_at=time.time(),
        has_webhook=True,
        duration_ms=3,
    )

    assert settled
    assert await redis.zscore(home("acme", URL).due, delivery.event_id) is None
    assert not await redis.exists(keys.delivery(delivery.event_id))
    assert [a.outcome for a in await attempts(redis, delivery.task_id)] == [
        DeliveryOutcome.ACKED,
        DeliveryOutcome.SKIPPED,
    ]
    assert await outbox.claim(home("acme", URL), limit=10, now=due_at + 1) == []
    again = await outbox.ack(
        tenant="acme",
        event_id=delivery.event_id,
        task_id=delivery.task_id,
        created_at=time.time(),
        has_webhook=True,
        duration_ms=3,
    )
    assert not again
    assert len(await attempts(redis, delivery.task_id)) == 2


async def test_an_ack_after_the_claim_took_the_push_settles_nothing(redis: aioredis.Redis, outbox: Outbox) -> None:
    delivery = pending(1)
    due_at = time.time()
    await stage(redis, [delivery], due_at=due_at)
    await redis.set(keys.ack_marker(delivery.event_id), "1")

    claimed = await outbox.claim(home("acme", URL), limit=10, now=due_at + 1)

    assert [(d.event_id, pushed) for d, pushed in claimed] == [(delivery.event_id, True)]
    late = await outbox.ack(
        tenant="acme",
        event_id=delivery.event_id,
        task_id=delivery.task_id,
        created_at=time.time(),
        has_webhook=True,
        duration_ms=3,
    )
    assert not late
    assert await redis.exists(keys.delivery(delivery.event_id))  # the webhook goes on
    assert await attempts(redis, delivery.task_id) == []


async def test_a_replay_is_handed_to_its_destination_once(redis: aioredis.Redis, outbox: Outbox) -> None:
    delivery = pending(1)
    await stage(redis, [delivery], due_at=time.time())
    _, due, flight, _ = destination_for("acme", URL).keys

    lease = await outbox.handoff(delivery)

    assert lease is not None
    assert await redis.zscore(home("acme", URL).due, delivery.event_id) is None
    assert await redis.zscore(flight, delivery.event_id) == float(lease.token)
    # A second hand-off (a slow first one claimed again) owes nothing more.
    await redis.zadd(home("acme", URL).due, {delivery.event_id: time.time()})
    assert await outbox.handoff(delivery) is None
    assert await redis.zcard(flight) == 1
    assert await redis.zcard(due) == 0
    assert await redis.zscore(home("acme", URL).due, delivery.event_id) is None


async def test_a_hand_off_whose_record_is_gone_owes_nothing(redis: aioredis.Redis, outbox: Outbox) -> None:
    delivery = pending(1)
    await stage(redis, [delivery], due_at=time.time())
    await redis.delete(keys.delivery(delivery.event_id))  # purged meanwhile

    assert await outbox.handoff(delivery) is None

    assert await redis.zcard(home("acme", URL).due) == 0
    assert not await redis.exists(*destination_for("acme", URL).keys[1:])


async def test_an_outcome_under_a_stale_lease_is_only_noted(redis: aioredis.Redis, outbox: Outbox) -> None:
    delivery = pending(1)
    await stage(redis, [delivery], due_at=time.time())
    stale = await outbox.handoff(delivery)
    assert stale is not None
    # Its worker stalled past the lease: another worker holds the attempt now.
    (fresh,) = await outbox.claim_destinations(home("acme", URL), limit=10, now=time.time() + FLOW.lease_s + 1)
    assert fresh.delivery.event_id == delivery.event_id
    assert fresh.token != stale.token

    gone = await record(outbox, stale, 410, Decision(Verdict.DEAD, reason=DeadLetterReason.ENDPOINT_GONE))

    assert gone.dead is None
    assert await redis.zcard(home("acme", URL).dead_letters) == 0
    assert await redis.exists(keys.delivery(delivery.event_id))
    _, _, flight, _ = destination_for("acme", URL).keys
    assert await redis.zscore(flight, delivery.event_id) == float(fresh.token)
    assert [a.status_code for a in await attempts(redis, delivery.task_id)] == [410]  # written down all the same
    # The holder's outcome counts.
    await record(outbox, fresh, 200, Decision(Verdict.DELIVERED))
    assert not await redis.exists(keys.delivery(delivery.event_id))
    assert await redis.zcard(flight) == 0
