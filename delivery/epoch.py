"""The store's epoch: a key written once when the store is new, so that a store that lost its data is noticed.

Redis restarted without its files (or flushed) comes back empty and answers as if nothing happened: every task,
event and dead letter is gone, and nothing else would tell. Each process (API and worker) learns the epoch's id at
start and looks again every :data:`CHECK_INTERVAL_S`. A process that finds another id (or none) has seen the loss:
it says so once at ERROR, and the store keeps ``lost_at`` until an operator acknowledges it, so that ``/ready``
answers 503 with the reason on every node, started before or after.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import background, keys
from delivery.scripts import StepArgs, StepKeys, step, wire

__all__ = ["CHECK_INTERVAL_S", "EpochState", "StoreEpoch"]

log = logging.getLogger("relay.store")

# How often each process looks at the epoch.
CHECK_INTERVAL_S = 1.0


class EpochKeys(StepKeys, frozen=True, array_like=True, gc=False):
    epoch: str


class EpochArgs(StepArgs, array_like=True, gc=False):
    new_id: str
    now: float
    known: str  # '' when the caller knew none yet


_EPOCH = step(__file__, "epoch.lua", keys=EpochKeys, args=EpochArgs)


@dataclass(frozen=True, slots=True)
class EpochState:
    """The epoch as read: its id, and when a loss was noticed (None: none, or acknowledged)."""

    id: str | None
    lost_at: float | None

    @property
    def problem(self) -> str | None:
        """Why the store is not to be trusted, for ``/ready``; None when it is."""
        if self.id is None:
            return "the store lost its data: its epoch is gone (Redis restarted empty, or was flushed)"
        if self.lost_at is not None:
            at = datetime.fromtimestamp(self.lost_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            return (
                f"the store lost its data (noticed at {at}): tasks, events and dead letters from before are gone; "
                "acknowledge with POST /v1/ops/store/acknowledge"
            )
        return None


class StoreEpoch:
    """One process's view of the epoch.

    Args:
        redis: the storage client.
        on_lost: called once each time this process finds the epoch it knew gone (on the event loop).
        interval_s: how often :meth:`watch` looks.
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        on_lost: Callable[[], None] | None = None,
        interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self._redis = redis
        self._script = _EPOCH.bind(redis)
        self._on_lost = on_lost
        self._interval_s = interval_s
        self.known: str | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """Read the epoch (writing it into a new store); True when the one this process knew is gone."""
        epoch_id, _ = await self._script(
            keys=wire(EpochKeys(keys.EPOCH)), args=wire(EpochArgs(uuid.uuid4().hex, time.time(), self.known or ""))
        )
        epoch_id = _text(epoch_id)
        known, self.known = self.known, epoch_id
        if known is None or known == epoch_id:
            return False
        log.error(
            "the store lost its data: its epoch %s is gone (now %s). Redis restarted without its files, or was "
            "flushed: every task, event and dead letter from before is gone. /ready answers 503 until an operator "
            "acknowledges it (POST /v1/ops/store/acknowledge)",
            known,
            epoch_id,
        )
        if self._on_lost is not None:
            self._on_lost()
        return True

    async def state(self) -> EpochState:
        """The epoch as stored now (one read, no write)."""
        epoch_id, lost_at = await self._redis.hmget(keys.EPOCH, ["id", "lost_at"])
        return EpochState(
            id=None if epoch_id is None else _text(epoch_id),
            lost_at=None if lost_at is None else float(lost_at),
        )

    async def acknowledge(self) -> bool:
        """An operator has seen the loss: ``/ready`` may say ready again. False when there was none to see."""
        return bool(await self._redis.hdel(keys.EPOCH, "lost_at"))

    def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="relay-store-epoch")

    async def stop(self) -> None:
        await background.stop(self._watcher)
        self._watcher = None

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except (RedisError, OSError) as exc:
                # Redis away: others say so (and /ready); the epoch is read again once it answers.
                log.debug("reading the store's epoch failed: %s", exc)
            await asyncio.sleep(self._interval_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
