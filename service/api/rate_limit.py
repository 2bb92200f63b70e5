"""Submissions per second per tenant: a token bucket in Redis (burst = rate), shared by every API node.

On a Redis Cluster a tenant's bucket is one key on one master, while its tasks spread over all of them. When that
master is away, a submission that would be placed on another master is not refused for it: this API process keeps a
bucket of its own for the tenant, at the same rate, until the key answers again (so the rate holds per process
while it lasts).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import keys
from delivery.scripts import StepArgs, StepKeys, step, wire
from delivery.storage_away import Outages, is_away

log = logging.getLogger("relay.api")

# Tenants whose bucket one process keeps while their key is away (least recently used dropped first; a dropped one
# starts again from a full bucket, as an idle tenant's would).
DEFAULT_LOCAL_TENANTS = 4096


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


class LocalBuckets:
    """Token buckets kept by one process (what ``rate_limit.lua`` does in Redis, here): ``clock`` in seconds."""

    def __init__(
        self, *, rate: float, burst: float, clock: Callable[[], float], tenants: int = DEFAULT_LOCAL_TENANTS
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tenants = tenants
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tenant -> (tokens, at)

    def take(self, tenant: str) -> Taken:
        now = self._clock()
        tokens, at = self._buckets.pop(tenant, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - at) * self._rate)
        taken = Taken(True, 0.0) if tokens >= 1 else Taken(False, (1 - tokens) / self._rate)
        self._buckets[tenant] = (tokens - 1 if taken.allowed else tokens, now)
        while len(self._buckets) > self._tenants:
            self._buckets.popitem(last=False)
        return taken

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimiter:
    """``clock`` stands in for Redis's clock, which times the bucket by default (one clock for every API node), and
    for this process's monotonic clock, which times its own buckets while a tenant's key is away."""

    def __init__(self, *, redis: aioredis.Redis, rate: float, clock: Callable[[], float] | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be above 0")
        self._clock = clock
        self._rate = rate
        self._burst = max(1.0, rate)
        self._script = _TAKE.bind(redis)
        self._local = LocalBuckets(rate=rate, burst=self._burst, clock=clock or time.monotonic)
        self._outages = Outages(
            log,
            "the submit rate",
            fallback="cannot be counted in Redis ({cause}); limiting it in this process until it can",
            again="is counted across the cluster again",
        )

    async def retry_after_s(self, tenant: str) -> int | None:
        """None when ``tenant`` may submit now (and takes a token), else whole seconds to wait."""
        now = "" if self._clock is None else self._clock()
        try:
            taken = Taken.read(
                await self._script(
                    keys=wire(BucketKeys.of(tenant)), args=wire(BucketArgs(rate=self._rate, burst=self._burst, now=now))
                )
            )
        except (RedisError, OSError) as exc:
            if not is_away(exc):
                raise
            self._outages.away(f"tenant {tenant}", exc)
            taken = self._local.take(tenant)
        else:
            self._outages.back(f"tenant {tenant}")
        if taken.allowed:
            return None
        return max(1, math.ceil(taken.wait_s))
