"""The submit rate limit, against a real Redis with the clock passed in: the burst, Retry-After, the refill, one
bucket per tenant, and no more tokens than there are when API nodes ask at once."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from delivery.redis_client import connect
from service.api.rate_limit import LocalBuckets, RateLimiter
from service.processes import RedisServer
from tests.cluster import free_ports
from tests.service.api.conftest import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_burst_of_the_rate_passes_then_retry_after_says_when(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = RateLimiter(redis=redis, clock=clock.time, rate=5)
    assert [await limiter.retry_after_s("acme") for _ in range(5)] == [None] * 5
    assert await limiter.retry_after_s("acme") == 1  # a token comes in 0.2 s: rounded up to a whole second
    clock.now += 0.21
    assert await limiter.retry_after_s("acme") is None
    assert await limiter.retry_after_s("acme") == 1


async def test_a_slow_rate_asks_for_the_whole_wait(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = RateLimiter(redis=redis, clock=clock.time, rate=0.25)  # one every 4 s; the burst is one
    assert await limiter.retry_after_s("acme") is None
    assert await limiter.retry_after_s("acme") == 4
    clock.now += 2.5
    assert await limiter.retry_after_s("acme") == 2  # 1.5 s left: a refusal takes no token
    clock.now += 1.5
    assert await limiter.retry_after_s("acme") is None


async def test_an_idle_tenant_gets_no_more_than_its_burst(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = RateLimiter(redis=redis, clock=clock.time, rate=2)
    await limiter.retry_after_s("acme")
    clock.now += 3600
    assert [await limiter.retry_after_s("acme") for _ in range(3)] == [None, None, 1]


async def test_each_tenant_has_its_own_bucket(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = RateLimiter(redis=redis, clock=clock.time, rate=1)
    assert await limiter.retry_after_s("acme") is None
    assert await limiter.retry_after_s("acme") == 1
    assert await limiter.retry_after_s("globex") is None


async def test_nodes_asking_at_once_share_one_bucket(redis_url: str, clock: Clock) -> None:
    clients = [connect(redis_url) for _ in range(4)]
    try:
        limiters = [RateLimiter(redis=c, clock=clock.time, rate=10) for c in clients]
        answers = await asyncio.gather(*(limiters[n % 4].retry_after_s("acme") for n in range(40)))
    finally:
        for client in clients:
            await client.aclose()
    assert answers.count(None) == 10
    assert set(answers) == {None, 1}


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="above 0"):
        RateLimiter(redis=aioredis.Redis(), rate=0)


async def test_with_the_tenants_key_away_this_process_limits_at_the_same_rate(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)  # nothing listens: the tenant's bucket is on a node that is away
    away = connect(f"redis://127.0.0.1:{port}", retries=0)
    try:
        limiter = RateLimiter(redis=away, clock=clock.time, rate=5)
        with caplog.at_level(logging.WARNING, logger="relay.api"):
            assert [await limiter.retry_after_s("acme") for _ in range(5)] == [None] * 5
            assert await limiter.retry_after_s("acme") == 1
            assert await limiter.retry_after_s("globex") is None  # each tenant its own bucket
            clock.now += 0.21
            assert await limiter.retry_after_s("acme") is None
            assert await limiter.retry_after_s("acme") == 1
    finally:
        await away.aclose()
    lines = [r for r in caplog.records if "submit rate of tenant acme cannot be counted" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None


async def test_the_shared_bucket_is_used_again_once_the_key_answers(
    redis_server: RedisServer, redis_url: str, clock: Clock
) -> None:
    client = connect(redis_url, retries=0)
    try:
        limiter, other_node = (RateLimiter(redis=client, clock=clock.time, rate=1) for _ in range(2))
        redis_server.kill()
        assert await limiter.retry_after_s("acme") is None  # from this process's bucket
        redis_server.start()
        assert await other_node.retry_after_s("acme") is None  # the shared bucket, untouched meanwhile
        assert await limiter.retry_after_s("acme") == 1  # shared again: the other node took its token
    finally:
        if not redis_server.running:
            redis_server.start()
        await client.aclose()


def test_local_buckets_are_bounded() -> None:
    clock = Clock()
    buckets = LocalBuckets(rate=1, burst=1, clock=clock.time, tenants=2)
    for tenant in ("acme", "globex", "initech"):
        assert buckets.take(tenant).allowed
    assert len(buckets) == 2
    assert buckets.take("acme").allowed  # dropped first: a full bucket again, as an idle tenant's
    assert not buckets.take("initech").allowed
