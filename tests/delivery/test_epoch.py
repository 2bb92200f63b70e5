"""The store's epoch against a real Redis: written once, a loss seen once by each process that knew the store,
kept for /ready until acknowledged, and nothing said about a store that is merely new."""

from __future__ import annotations

import redis.asyncio as aioredis

from delivery.epoch import StoreEpoch


async def test_a_new_store_gets_an_epoch_and_is_not_a_loss(redis: aioredis.Redis) -> None:
    first, second = StoreEpoch(redis=redis), StoreEpoch(redis=redis)
    assert await first.check() is False
    assert await second.check() is False
    assert first.known == second.known is not None
    assert await first.check() is False
    state = await first.state()
    assert state.id == first.known
    assert state.problem is None


async def test_a_store_that_lost_its_data_is_seen_once_by_each_process_and_kept_until_acknowledged(
    redis: aioredis.Redis,
) -> None:
    told: list[str] = []
    api = StoreEpoch(redis=redis, on_lost=lambda: told.append("api"))
    worker = StoreEpoch(redis=redis, on_lost=lambda: told.append("worker"))
    await api.check()
    await worker.check()

    await redis.flushall()
    assert (await api.state()).problem is not None  # gone: /ready says so before anyone looked
    assert await api.check() is True
    assert await api.check() is False  # once
    assert await worker.check() is True  # the worker finds the new epoch, not the one it knew
    assert told == ["api", "worker"]

    late = StoreEpoch(redis=redis)  # a process started after the loss: not told, but /ready still says it
    assert await late.check() is False
    problem = (await late.state()).problem
    assert problem is not None
    assert "lost its data" in problem

    assert await late.acknowledge() is True
    assert (await api.state()).problem is None
    assert await late.acknowledge() is False
    assert await api.check() is False
    assert await worker.check() is False
