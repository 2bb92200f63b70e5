"""RELAY_TENANT_MAX_STREAMS' count against a real Redis: shared by API nodes, freed on release, and a dead node's
places expire (the clock passed in)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncGenerator
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.redis_client import connect
from service.api.state import ApiState
from service.api.tenant_streams import TenantStreams
from service.processes import RedisServer
from tests.service.api.conftest import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_two_nodes_share_a_tenants_places_and_tenants_do_not(redis: aioredis.Redis, clock: Clock) -> None:
    first, second = (
        TenantStreams(redis=redis, clock=clock.time, limit=3),
        TenantStreams(redis=redis, clock=clock.time, limit=3),
    )

    taken = [await first.acquire("acme"), await second.acquire("acme"), await first.acquire("acme")]
    assert all(taken)
    assert await second.acquire("acme") is None
    assert await first.acquire("acme") is None
    assert await second.acquire("globex") is not None  # its own count

    second.release(taken[1])
    await asyncio.sleep(0.05)  # released in the background
    assert await first.acquire("acme") is not None
    assert await second.acquire("acme") is None


async def test_at_once_no_more_than_the_limit_are_taken(redis: aioredis.Redis, clock: Clock) -> None:
    nodes = [TenantStreams(redis=redis, clock=clock.time, limit=5) for _ in range(4)]
    taken = await asyncio.gather(*(node.acquire("acme") for node in nodes for _ in range(10)))
    assert sum(place is not None for place in taken) == 5


async def test_a_dead_nodes_places_expire_and_a_live_nodes_are_refreshed(redis: aioredis.Redis, clock: Clock) -> None:
    dead, live = (
        TenantStreams(redis=redis, clock=clock.time, limit=2, ttl_s=60),
        TenantStreams(redis=redis, clock=clock.time, limit=2, ttl_s=60),
    )
    assert await dead.acquire("acme") is not None
    assert await live.acquire("acme") is not None
    assert await live.acquire("acme") is None

    clock.now += 40
    await live.refresh()  # the dead node refreshes nothing
    clock.now += 40  # past the dead node's place, not the live one's
    assert await live.acquire("acme") is not None
    assert await live.acquire("acme") is None


async def test_a_stream_that_never_starts_leaves_its_place_to_expire(redis: aioredis.Redis, clock: Clock) -> None:
    """A client gone before a stream's first byte: its generator is dropped unstarted, and no finally runs. The place
    must not be refreshed for ever (the tenant would lose it on every node until this node restarts)."""
    places = TenantStreams(redis=redis, clock=clock.time, limit=1, ttl_s=60)
    place = await places.acquire("acme")
    assert place is not None

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b""

    holder = SimpleNamespace(tenant_streams=places, _counted_stream=lambda chunks, client, place: chunks)
    stream = ApiState.counted_stream(holder, chunks(), "127.0.0.1", place)  # type: ignore[arg-type]
    del stream  # never iterated
    gc.collect()

    clock.now += 40
    await places.refresh()  # a refresh would keep a place it still held alive past its first 60 s
    clock.now += 40
    assert await places.acquire("acme") is not None


async def test_with_the_tenants_key_away_places_are_counted_on_this_node_up_to_the_limit(
    away: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    places = TenantStreams(redis=away, limit=2)
    with caplog.at_level(logging.WARNING, logger="relay.api"):
        taken = [await places.acquire("acme"), await places.acquire("acme")]
        assert all(taken)
        assert await places.acquire("acme") is None  # the same limit, on this node
        assert await places.acquire("globex") is not None  # each tenant its own

        places.release(taken[0])  # given back here, at once
        assert await places.acquire("acme") is not None
        assert await places.acquire("acme") is None
        places.forget(taken[1])  # a stream collected without a release gives its place back too
        assert await places.acquire("acme") is not None

    lines = [r for r in caplog.records if "stream places of tenant acme cannot be counted" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None


async def test_places_taken_here_stay_here_when_the_key_is_back(
    redis_server: RedisServer, redis_url: str, clock: Clock
) -> None:
    client = connect(redis_url, retries=0)
    try:
        places = TenantStreams(redis=client, clock=clock.time, limit=2)
        redis_server.kill()
        here = await places.acquire("acme")
        assert here is not None
        redis_server.start()
        in_redis = [await places.acquire("acme"), await places.acquire("acme")]
        assert all(in_redis)  # counted in Redis again, where the place taken here is not
        assert await places.acquire("acme") is None
        places.release(here)
        await places.refresh()  # refreshes only what Redis holds
        assert await client.zcard(keys.tenant_streams("acme")) == 2
    finally:
        if not redis_server.running:
            redis_server.start()
        await client.aclose()
