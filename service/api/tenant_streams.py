"""RELAY_TENANT_MAX_STREAMS: the WebSockets and event streams one tenant has open, counted across every API node.

Each open socket or stream holds a member of its tenant's sorted set in Redis, scored with the time it expires.
Its node refreshes its members while they are open and removes them when they close; the members of a node that
died expire, so a crash costs a tenant its places for at most :data:`PLACE_TTL_S`. Taking a place is one Lua step
that drops expired members, counts and adds, so two nodes never both take the last place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import background, keys
from delivery.redis_batch import batched
from delivery.scripts import StepArgs, StepKeys, step, wire

log = logging.getLogger("relay.api")


class StreamsKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``tenant_streams.lua``: the tenant's places."""

    streams: str

    @classmethod
    def of(cls, tenant: str) -> StreamsKeys:
        return cls(streams=keys.tenant_streams(tenant))


class StreamsArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``tenant_streams.lua``, in its widest form: 'take' sets ``member`` and ``limit``, 'refresh'
    the ``members`` it pushes on."""

    repeated = True
    mode: str
    now: str | float
    ttl_s: float
    key_ttl_s: int
    member: str = ""
    limit: int | str = ""
    members: list[str] = []


# Answers for 'take' 1 when taken, 0 when the tenant has its limit open already; for 'refresh' 1.
_TAKE = step(__file__, "tenant_streams.lua", keys=StreamsKeys, args=StreamsArgs)

# How long a place outlives its node's last refresh; the node refreshes every third of it.
PLACE_TTL_S = 60.0
# Members refreshed per trip.
REFRESH_BATCH = 500


class TenantStreams:
    """The places of one API process in every tenant's count.

    Args:
        redis: the storage client.
        limit: places per tenant (RELAY_TENANT_MAX_STREAMS).
        ttl_s: how long a place lasts without a refresh.
        clock: what stands in for Redis's clock (None: Redis's own, which times every place of every API process,
            so that a node whose clock is off neither drops live places nor keeps dead ones).
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        limit: int,
        ttl_s: float = PLACE_TTL_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._redis = redis
        self.limit = limit
        self._ttl_s = ttl_s
        self._clock = clock
        self._batch = batched(redis)
        self._take = _TAKE.batched(redis)
        self._node = uuid.uuid4().hex
        self._ids = itertools.count(1)
        self._held: dict[str, str] = {}  # member -> tenant
        self._refresher: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, tenant: str) -> str | None:
        """A place for one socket or stream of ``tenant`` (the token to :meth:`release`), or None when the tenant
        has its limit open already. Raises RedisError when Redis does not answer."""
        member = f"{self._node}:{next(self._ids)}"
        take = StreamsArgs(
            mode="take",
            now=self._now(),
            ttl_s=self._ttl_s,
            key_ttl_s=math.ceil(self._ttl_s),
            member=member,
            limit=self.limit,
        )
        taken = await self._take(keys=wire(StreamsKeys.of(tenant)), args=wire(take))
        if not int(taken):
            return None
        self._held[member] = tenant
        return member

    def forget(self, member: str) -> None:
        """Stop refreshing a place without a word to Redis (safe anywhere, a finalizer included): it expires there."""
        self._held.pop(member, None)

    def release(self, member: str | None) -> None:
        """Give a place back (in the background: a place Redis does not hear of expires on its own)."""
        if member is None:
            return
        tenant = self._held.pop(member, None)
        if tenant is None:
            return
        task = asyncio.create_task(self._remove(tenant, member))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _remove(self, tenant: str, member: str) -> None:
        try:
            await self._batch.command("ZREM", keys.tenant_streams(tenant), member)
        except (RedisError, OSError) as exc:
            log.warning("giving back a stream place of tenant %s failed (%s); it expires on its own", tenant, exc)

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="relay-tenant-streams")

    async def stop(self) -> None:
        for task in [self._refresher, *self._releasing]:
            await background.stop(task)
        self._refresher = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("refreshing %d stream places failed: %s", len(self._held), exc)

    async def refresh(self) -> None:
        """Push the expiry of every place this process holds (XX: a place given back meanwhile stays gone)."""
        by_tenant: defaultdict[str, list[str]] = defaultdict(list)
        for member, tenant in self._held.items():
            by_tenant[tenant].append(member)
        ttl = math.ceil(self._ttl_s)
        for tenant, members in by_tenant.items():
            streams = wire(StreamsKeys.of(tenant))
            for start in range(0, len(members), REFRESH_BATCH):
                chunk = members[start : start + REFRESH_BATCH]
                refresh = StreamsArgs(mode="refresh", now=self._now(), ttl_s=self._ttl_s, key_ttl_s=ttl, members=chunk)
                await self._take(keys=streams, args=wire(refresh))

    def _now(self) -> str | float:
        return "" if self._clock is None else self._clock()
