"""Submissions per second per tenant: a token bucket in Redis (burst = rate), shared by every API node."""

from __future__ import annotations

import math
from collections.abc import Callable

import redis.asyncio as aioredis

from delivery import keys
from delivery.scripts import step

_TAKE = step(__file__, "rate_limit.lua")


class RateLimiter:
    """``clock`` stands in for Redis's clock, which times the bucket by default (one clock for every API node)."""

    def __init__(self, *, redis: aioredis.Redis, rate: float, clock: Callable[[], float] | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0")
        self._clock = clock
        self._rate = rate
        self._burst = max(1.0, rate)
        self._script = _TAKE.bind(redis)

    async def retry_after_s(self, tenant: str) -> int | None:
        """None when ``tenant`` may submit now (and takes a token), else whole seconds to wait."""
        allowed, wait = await self._script(
            keys=[keys.rate(tenant)], args=[self._rate, self._burst, "" if self._clock is None else self._clock()]
        )
        if int(allowed):
            return None
        return max(1, math.ceil(float(wait)))
