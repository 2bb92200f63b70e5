"""The membership sets of live processes against a real Redis: a heartbeat keeps a member, an expired one is dropped,
and both are timed by Redis's clock, whatever the clock of the process that beats or reads."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from delivery import shares


async def test_members_beat_and_one_whose_heartbeat_expired_is_dropped(redis: aioredis.Redis) -> None:
    seconds, micros = await redis.time()
    redis_now = seconds + micros / 1e6
    await redis.zadd(shares.WORKERS, {"dead": redis_now - 0.5})  # its heartbeat ran out a moment ago

    assert await shares.alive(redis, shares.WORKERS, "w-1") == ["w-1"]
    assert await shares.alive(redis, shares.WORKERS, "w-2") == ["w-1", "w-2"]
    assert await shares.members(redis, shares.WORKERS) == ["w-1", "w-2"]
    assert await redis.zscore(shares.WORKERS, "dead") is None
    expires_at = await redis.zscore(shares.WORKERS, "w-2")
    assert expires_at == pytest.approx(redis_now + shares.MEMBER_TTL_S, abs=1)


async def test_a_process_whose_clock_is_far_off_sees_the_same_members(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await shares.alive(redis, shares.WORKERS, "on-time")
    # This process's clock a minute ahead (ten heartbeats' lives): the others are alive all the same, and its own
    # heartbeat does not outlive it.
    ahead = time.time() + 60
    monkeypatch.setattr(time, "time", lambda: ahead)
    assert await shares.alive(redis, shares.WORKERS, "ahead") == ["ahead", "on-time"]
    assert await shares.members(redis, shares.WORKERS) == ["ahead", "on-time"]
    seconds, _ = await redis.time()
    assert (await redis.zscore(shares.WORKERS, "ahead") or 0) < seconds + shares.MEMBER_TTL_S + 1
