"""Submissions per second per tenant: a token bucket in Redis (burst = rate), shared by every API node."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from delivery import keys
from delivery.scripts import StepArgs, StepKeys, step, wire


class BucketKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``rate_limit.lua``: the tenant's bucket."""

    bucket: str

    @classmethod
    def of(cls, tenant: str) -> BucketKeys:
        return cls(bucket=keys.rate(tenant))


class BucketArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``rate_limit.lua``."""

    rate: float
    burst: float
    now: str | float


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``rate_limit.lua`` answered: whether a token was taken, else how long until one is free."""

    allowed: bool
    wait_s: float

    @classmethod
    def read(cls, reply: Sequence[Any]) -> Taken:
        return cls(bool(int(reply[0])), float(reply[1]))


_TAKE = step(__file__, "rate_limit.lua", keys=BucketKeys, args=BucketArgs)


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
        now = "" if self._clock is None else self._clock()
        taken = Taken.read(
            await self._script(
                keys=wire(BucketKeys.of(tenant)), args=wire(BucketArgs(rate=self._rate, burst=self._burst, now=now))
            )
        )
        if taken.allowed:
            return None
        return max(1, math.ceil(taken.wait_s))
