"""Which partitions a worker looks after: its share of the periodic work (sweeping owed tasks, promoting scheduled
ones, claiming due webhooks and ready destinations, trimming).

Every worker keeps a heartbeat in one small set of live workers (``relay:workers``, a member and the time it
expires, by Redis's clock: see ``membership.lua``) and reads the others from it. A partition belongs to the live worker with the highest hash of (worker,
partition) (rendezvous hashing): a worker that joins takes about 1/n of the partitions from the others, one that
dies hands its own out, and every other partition stays where it was. A worker polls its own partitions often and
every partition now and then (:data:`BACKSTOP_S`), so that nothing waits long while membership settles (a worker
that died is noticed once its heartbeat expires, :data:`MEMBER_TTL_S`).

On a store of one partition every worker polls it, as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import background, keys
from delivery.redis_client import as_text
from delivery.scripts import StepArgs, StepKeys, step, wire

log = logging.getLogger("relay.shares")

WORKERS = keys.PREFIX + "workers"  # sorted set: worker id -> unix time its heartbeat expires
API_NODES = keys.PREFIX + "api-nodes"  # sorted set: API process id -> unix time its heartbeat expires
BEAT_S = 2.0
MEMBER_TTL_S = 6.0
# Every partition is polled at least this often by every worker, its own or not.
BACKSTOP_S = 5.0


class MembershipKeys(StepKeys, frozen=True, array_like=True, gc=False):
    members: str


class MembershipArgs(StepArgs, array_like=True, gc=False):
    op: str  # 'beat' or 'read'
    member: str = ""
    ttl_s: float | str = ""


_MEMBERSHIP = step(__file__, "membership.lua", keys=MembershipKeys, args=MembershipArgs)


def owner(members: Sequence[str], partition: keys.Partition) -> str:
    """The member that owns ``partition`` (rendezvous hashing)."""
    return max(members, key=lambda m: hashlib.blake2b(f"{m}/{partition.index}".encode(), digest_size=8).digest())


async def alive(redis: aioredis.Redis, key: str, member: str) -> list[str]:
    """Renew ``member``'s heartbeat in the membership set ``key``; the members alive (one round trip)."""
    raw = await _MEMBERSHIP.bind(redis)(
        keys=wire(MembershipKeys(key)), args=wire(MembershipArgs("beat", member, MEMBER_TTL_S))
    )
    return sorted({as_text(m) for m in raw} | {member})


async def members(redis: aioredis.Redis, key: str) -> list[str]:
    """The members of a membership set whose heartbeat has not expired."""
    found = await _MEMBERSHIP.bind(redis)(keys=wire(MembershipKeys(key)), args=wire(MembershipArgs("read")))
    return sorted(as_text(m) for m in found if isinstance(m, bytes | str))


class Heartbeat:
    """A process's heartbeat in a membership set (API nodes), renewed every :data:`BEAT_S` until stopped; stopping
    leaves the set at once (the others see the process gone now, not once its heartbeat expires)."""

    def __init__(self, *, redis: aioredis.Redis, key: str, member: str) -> None:
        self._redis = redis
        self._key = key
        self.member = member
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-heartbeat")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self._redis.zrem(self._key, self.member)

    async def beat(self) -> None:
        """Renew the heartbeat (one round trip)."""
        await alive(self._redis, self._key, self.member)

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:  # Redis away: what was known stands
                log.debug("heartbeat in %s failed (%s); trying again", self._key, exc)
            await asyncio.sleep(BEAT_S)


class Shares(Heartbeat):
    """A worker's heartbeat among the workers, and the partitions that are its share (see above)."""

    def __init__(self, *, redis: aioredis.Redis, member: str | None = None) -> None:
        super().__init__(redis=redis, key=WORKERS, member=member or uuid.uuid4().hex)
        self._members: tuple[str, ...] = (self.member,)
        self._own: tuple[keys.Partition, ...] = tuple(keys.partitions())

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def poller(self) -> Callable[[], Sequence[keys.Partition]]:
        """For one loop of periodic work: a function that gives the partitions to poll now, this worker's own and,
        every :data:`BACKSTOP_S`, every one."""
        backstop_at = 0.0

        def to_poll() -> Sequence[keys.Partition]:
            nonlocal backstop_at
            now = time.monotonic()
            if now - backstop_at >= BACKSTOP_S:
                backstop_at = now
                return keys.partitions()
            return self._own

        return to_poll

    def own(self) -> Sequence[keys.Partition]:
        return self._own

    async def beat(self) -> None:
        """Renew this worker's heartbeat and learn who else is alive (one round trip)."""
        members = tuple(await alive(self._redis, WORKERS, self.member))
        if members != self._members:
            self._members = members
            self._own = self._share(members)
            if not keys.layout().single:
                log.info(
                    "%d workers alive: this one looks after %d of %d partitions",
                    len(members),
                    len(self._own),
                    len(keys.partitions()),
                )

    def _share(self, members: Sequence[str]) -> tuple[keys.Partition, ...]:
        if keys.layout().single:
            return tuple(keys.partitions())
        return tuple(p for p in keys.partitions() if owner(members, p) == self.member)
