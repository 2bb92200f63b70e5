"""Whether the store takes new work: Redis's memory against its ``maxmemory``, and whether it takes writes at all.

Read from Redis at most once a second (``INFO memory`` and a write that writes nothing) and kept, so that a
submission costs no extra round trip. Between two readings the bytes this process has stored since the last one
are added to the reading, so that a burst cannot run far past the mark before the next one.

On a Redis Cluster every master is read (``INFO`` is a command of one node, and a pipeline of a cluster client
refuses it): the reading is the master nearest its ``maxmemory`` (with none set, the one using the most), and a
refusal is any master's, its write probed through a key of each partition. Tasks are placed by their destination or
at random, not by room, so a master past the mark would take its share of new work and then refuse the writes that
work needs to end: the store refuses new work as a whole, as one Redis does.

New tasks are refused from HIGH_WATER of ``maxmemory`` on, not only at ``maxmemory``: the rest is left for the work
already accepted to end in (its events and results), and Redis itself refuses what grows memory past ``maxmemory``
(see ``delivery.store_refusals``). Refusing stops only once memory is below LOW_WATER, so that a store at the mark
does not flap between the two answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from redis.exceptions import RedisClusterException, RedisError

from delivery import background, keys
from delivery.store_refusals import WriteRefusal, refusal_of

log = logging.getLogger("relay.api")

# New tasks are refused once used memory reaches this fraction of maxmemory ...
HIGH_WATER = 0.9
# ... and taken again once it is below this one.
LOW_WATER = 0.85
# Redis is read at most this often; answers in between use the last reading.
READ_EVERY_S = 1.0
# A reading older than this (no submission for a while) refuses nothing: the submit step itself is refused by a
# Redis that is full or refuses writes, and that refusal is taken up at once (``refused_by_redis``).
STALE_AFTER_S = 3.0
# How long a refusal tells clients to wait (Retry-After).
RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class Reading:
    """One look at Redis: its memory (maxmemory 0: no limit) and why it refuses writes, if it does."""

    used_bytes: int = 0
    max_bytes: int = 0
    policy: str = ""
    refusal: WriteRefusal | None = None  # from the write probe (FULL only when Redis itself said so)


async def _read_cluster(redis: aiocluster.RedisCluster) -> tuple[Any, Any]:
    """A cluster's reading, as one Redis's pipeline gives it: the memory of the master nearest its maxmemory (an
    exception when no master answered), and the first refusal of a write probe (else any failure of one, else 0)."""
    masters = redis.get_primaries() or (await redis.initialize()).get_primaries()  # (a client not yet used)
    infos = await asyncio.gather(*(redis.info("memory", target_nodes=node) for node in masters), return_exceptions=True)
    answered = [info for info in infos if isinstance(info, dict)]
    memory: Any = max(answered, key=_fullness) if answered else next(iter(infos), RedisClusterException("no master"))
    async with redis.pipeline(transaction=False) as pipe:
        for partition in keys.partitions():
            pipe.delete(partition.write_probe)
        probes = await pipe.execute(raise_on_error=False)
    failures = [p for p in probes if isinstance(p, Exception)]
    probe = next((p for p in failures if refusal_of(p) is not None), failures[0] if failures else 0)
    return memory, probe


def _fullness(memory: dict[str, Any]) -> tuple[bool, float]:
    """How near its maxmemory a node is (a node with a maxmemory before one without; then the most used)."""
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    return (limit > 0, used / limit if limit else float(used))


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


class StoreWatch:
    """What the API knows of the store's room; one per API process."""

    def __init__(self, redis: aioredis.Redis, *, read_every_s: float = READ_EVERY_S) -> None:
        self._redis = redis
        self._read_every_s = read_every_s
        self.reading = Reading()
        self._read_at = float("-inf")
        self._stored_since = 0  # bytes this process stored since the reading
        self._reading_task: asyncio.Future[None] | None = None
        self.refusing: WriteRefusal | None = None
        self._warned_policy = False
        # Submissions this process refused, by reason (the store cannot count them: it takes no writes then).
        self.refused: Counter[WriteRefusal] = Counter()

    def refusal(self) -> WriteRefusal | None:
        """Why new work is refused now, or None when the store takes it.

        From the last reading; one more than a second old starts a new one in the background, so that a submission
        never waits for it (nor for a stalled Redis twice).
        """
        age_s = time.monotonic() - self._read_at
        if age_s >= self._read_every_s and (self._reading_task is None or self._reading_task.done()):
            self._reading_task = asyncio.ensure_future(self._read())
        return None if age_s >= STALE_AFTER_S else self.refusing

    async def refresh(self) -> None:
        """Read Redis now (callers at the same moment share one read). A Redis that does not answer leaves the last
        reading: that failure is the caller's own command's to report."""
        if self._reading_task is None or self._reading_task.done():
            self._reading_task = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading_task)

    def stored(self, nbytes: int) -> None:
        """This process stored about ``nbytes`` (a submission it accepted)."""
        self._stored_since += nbytes
        self._judge()

    def refused_by_redis(self, refusal: WriteRefusal) -> None:
        """A write was refused for ``refusal`` although the last reading said the store takes it."""
        if refusal is WriteRefusal.FULL:
            # at maxmemory: as full as a reading would say (the next reading decides when it ends)
            self.reading = Reading(
                used_bytes=max(self.reading.used_bytes, self.reading.max_bytes),
                max_bytes=self.reading.max_bytes,
                policy=self.reading.policy,
            )
        else:
            self.reading = Reading(self.reading.used_bytes, self.reading.max_bytes, self.reading.policy, refusal)
        self._judge(force=refusal)

    @property
    def used_estimate_bytes(self) -> int:
        return self.reading.used_bytes + self._stored_since

    async def close(self) -> None:
        await background.stop(self._reading_task)

    async def _read(self) -> None:
        self._read_at = time.monotonic()  # a Redis that does not answer is not asked again at once
        try:
            if isinstance(self._redis, aiocluster.RedisCluster):
                memory, probe = await _read_cluster(self._redis)
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.info("memory")
                    pipe.delete(keys.WRITE_PROBE)  # a write that writes nothing: Redis's write checks answer
                    memory, probe = await pipe.execute(raise_on_error=False)
        except (RedisError, RedisClusterException, OSError):
            return
        if isinstance(memory, Exception):
            return
        refusal = refusal_of(probe) if isinstance(probe, Exception) else None
        self.reading = Reading(
            used_bytes=int(memory.get("used_memory", 0)),
            max_bytes=int(memory.get("maxmemory", 0)),
            policy=str(memory.get("maxmemory_policy", "")),
            refusal=refusal,
        )
        self._stored_since = 0
        if self.reading.max_bytes and self.reading.policy != "noeviction" and not self._warned_policy:
            self._warned_policy = True
            log.warning(
                "Redis evicts keys when full (maxmemory-policy %s): it may drop accepted tasks; set noeviction",
                self.reading.policy,
            )
        self._judge()

    def _judge(self, force: WriteRefusal | None = None) -> None:
        reading = self.reading
        refusing = force or reading.refusal
        if refusing is None and reading.max_bytes:
            used = self.used_estimate_bytes
            mark = LOW_WATER if self.refusing is WriteRefusal.FULL else HIGH_WATER
            if used >= mark * reading.max_bytes:
                refusing = WriteRefusal.FULL
        if refusing is self.refusing:
            return
        was, self.refusing = self.refusing, refusing
        if refusing is WriteRefusal.FULL:
            log.error(
                "store full: used_memory %s of maxmemory %s (new tasks are refused from %d %%): new work gets 503 "
                "until memory is below %d %% (tasks drain, or raise maxmemory)",
                _mb(self.used_estimate_bytes),
                _mb(reading.max_bytes),
                HIGH_WATER * 100,
                LOW_WATER * 100,
            )
        elif refusing is not None:
            log.error("store refusing writes (%s): %s; new work gets 503", refusing.value, refusing.cause)
        else:
            log.warning(
                "store takes new work again (it refused it: %s); used_memory %s of maxmemory %s",
                was.value if was else "?",
                _mb(self.used_estimate_bytes),
                _mb(reading.max_bytes) if reading.max_bytes else "unlimited",
            )

    def describe(self) -> str:
        """The refusal as /ready says it."""
        if self.refusing is None:
            return "ok"
        if self.refusing is WriteRefusal.FULL:
            return (
                f"full: used_memory {_mb(self.used_estimate_bytes)} of maxmemory {_mb(self.reading.max_bytes)}; "
                f"{self.refusing.cause}"
            )
        return f"refusing writes: {self.refusing.cause}"
