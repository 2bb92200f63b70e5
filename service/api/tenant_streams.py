"""RELAY_TENANT_MAX_STREAMS: the WebSockets and event streams one tenant has open, counted across every API node.

Each open socket or stream holds a member of its tenant's sorted set in Redis, scored with the time it expires.
Its node refreshes its members while they are open and removes them when they close; the members of a node that
died expire, so a crash costs a tenant its places for at most :data:`PLACE_TTL_S`. Taking a place is one Lua step
that drops expired members, counts and adds, so two nodes never both take the last place.

On a Redis Cluster that set is one key on one master, while the tenant's tasks spread over all of them. When that
master is away, a socket or stream of a task on another master is not refused for it: the place is counted on this
API node alone, against the same limit (so per node while it lasts), and given back here; Redis is asked again for
each new place, and places taken here stay here until they are given back.
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
from delivery.storage_away import Outages, is_away

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
        # Places taken on this node alone while the tenant's key was away: member -> tenant, and per tenant their
        # number (entries of tenants with none are dropped, so both stay as small as what is open).
        self._local: dict[str, str] = {}
        self._local_count: dict[str, int] = {}
        self._outages = Outages(
            log,
            "the stream places",
            fallback=f"cannot be counted in Redis ({{cause}}); counting them on this node (up to {limit}) until they can",
            again="are counted across the cluster again",
        )
        self._refresher: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, tenant: str) -> str | None:
        """A place for one socket or stream of ``tenant`` (the token to :meth:`release`), or None when the tenant
        has its limit open already. With the tenant's key away, the place is counted on this node (see above).
        Raises RedisError when Redis fails otherwise."""
        member = f"{self._node}:{next(self._ids)}"
        take = StreamsArgs(
            mode="take",
            now=self._now(),
            ttl_s=self._ttl_s,
            key_ttl_s=math.ceil(self._ttl_s),
            member=member,
            limit=self.limit,
        )
        try:
            taken = await self._take(keys=wire(StreamsKeys.of(tenant)), args=wire(take))
        except (RedisError, OSError) as exc:
            if not is_away(exc):
                raise
            return self._acquire_here(tenant, member, exc)
        self._outages.back(f"tenant {tenant}")
        if not int(taken):
            return None
        self._held[member] = tenant
        return member

    def _acquire_here(self, tenant: str, member: str, exc: BaseException) -> str | None:
        self._outages.away(f"tenant {tenant}", exc)
        count = self._local_count.get(tenant, 0)
        if count >= self.limit:
            return None
        self._local_count[tenant] = count + 1
        self._local[member] = tenant
        return member

    def forget(self, member: str) -> None:
        """Stop refreshing a place without a word to Redis (safe anywhere, a finalizer included): it expires there."""
        self._held.pop(member, None)
        self._release_here(member)

    def release(self, member: str | None) -> None:
        """Give a place back (in the background: a place Redis does not hear of expires on its own)."""
        if member is None or self._release_here(member):
            return
        tenant = self._held.pop(member, None)
        if tenant is None:
            return
        task = asyncio.create_task(self._remove(tenant, member))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _release_here(self, member: str) -> bool:
        """Give back a place taken on this node alone; False when ``member`` is not one."""
        tenant = self._local.pop(member, None)
        if tenant is None:
            return False
        left = self._local_count[tenant] - 1
        if left:
            self._local_count[tenant] = left
        else:
            del self._local_count[tenant]
        return True

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
        """Push the expiry of every place this process holds (XX: a place given back meanwhile stays gone).

        Each tenant's places are refreshed apart: a tenant whose key is away does not leave the places of the
        others to expire. Raises the first failure once every tenant has been tried."""
        by_tenant: defaultdict[str, list[str]] = defaultdict(list)
        for member, tenant in self._held.items():
            by_tenant[tenant].append(member)
        ttl = math.ceil(self._ttl_s)
        failure: RedisError | OSError | None = None
        for tenant, members in by_tenant.items():
            streams = wire(StreamsKeys.of(tenant))
            try:
                for start in range(0, len(members), REFRESH_BATCH):
                    chunk = members[start : start + REFRESH_BATCH]
                    refresh = StreamsArgs(
                        mode="refresh", now=self._now(), ttl_s=self._ttl_s, key_ttl_s=ttl, members=chunk
                    )
                    await self._take(keys=streams, args=wire(refresh))
            except (RedisError, OSError) as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _now(self) -> str | float:
        return "" if self._clock is None else self._clock()
