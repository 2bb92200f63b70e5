"""The processes alive in the operator's view: none, some, or not known when the master holding them is away."""

from __future__ import annotations

import redis.asyncio as aioredis

from delivery import cluster_view, shares
from delivery.redis_client import connect
from tests.cluster import free_ports


async def test_workers_alive_are_listed_while_their_set_answers(redis: aioredis.Redis) -> None:
    assert await cluster_view._members(redis, shares.WORKERS) == []
    heartbeat = shares.Heartbeat(redis=redis, key=shares.WORKERS, member="host-a:101")
    await heartbeat.beat()
    assert await cluster_view._members(redis, shares.WORKERS) == ["host-a:101"]


async def test_workers_alive_are_unknown_not_zero_when_their_master_does_not_answer() -> None:
    [port] = free_ports(1)  # nothing listens there: the master holding the set is down
    away = connect(f"redis://127.0.0.1:{port}/0", retries=0)
    try:
        assert await cluster_view._members(away, shares.WORKERS) is None
    finally:
        await away.aclose()
