"""The dead-letter store: find, show, replay and purge webhooks that could not be delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.errors import UnreadableRecord
from delivery.outbox import Outbox, unlink_dead_letter
from delivery.records import DECODE_ERRORS, PendingDelivery, owner_of
from delivery.scripts import StepArgs, StepKeys, step, wire
from delivery.time_index import Position, parse_cursor, scan, take_page
from schemas.dead_letters import DeadLetter, DeadLetterReason
from schemas.deliveries import DeliveryStep, StepKind

# Dead letters replayed in one atomic step by a bulk replay.
REPLAY_BATCH = 200

_decode = msgspec.json.Decoder(DeadLetter).decode
_encode = msgspec.json.Encoder().encode


class ReplayKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``replay.lua``: a partition's schedule and counters, then each event's task's delivery steps."""

    repeated = True
    due: str
    stats: str
    steps: list[str]


class ReplayArgs(StepArgs, array_like=True, gc=False):
    repeated = True
    now: float | str  # '' for Redis's clock
    delivery_prefix: str
    replayed_counter: str
    steps_ttl_s: int
    events: list[str | bytes]  # per event: its id, its delivery record, its replayed step


_REPLAY = step(__file__, "replay.lua", keys=ReplayKeys, args=ReplayArgs)


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    tenant: str | None = None
    reason: DeadLetterReason | None = None
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, dead: DeadLetter) -> bool:
        return (
            (self.tenant is None or dead.tenant == self.tenant)
            and (self.reason is None or dead.reason is self.reason)
            and (self.task_id is None or dead.task_id == self.task_id)
        )


class DeadLetterStore:
    def __init__(self, *, redis: aioredis.Redis, outbox: Outbox) -> None:
        self._redis = redis
        self._outbox = outbox
        self._replay = _REPLAY.bind(redis)

    async def get(self, dl_id: str) -> DeadLetter | None:
        """The dead letter, None when there is none; raises :class:`UnreadableRecord` when it cannot be read."""
        key = keys.dead_letter(dl_id)
        raw = await self._redis.get(key)
        if not raw:
            return None
        try:
            return _decode(raw)
        except DECODE_ERRORS as exc:
            raise UnreadableRecord(key, tenant=owner_of(raw), reason=type(exc).__name__) from None

    async def delete_unreadable(self, dl_id: str) -> None:
        """Delete a dead letter that cannot be read (its event id is unknown: its event index entry expires)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.dead_letter(dl_id))
            pipe.zrem(keys.of(dl_id).dead_letters, dl_id)
            await pipe.execute()

    async def page(
        self, where: DeadLetterFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """Newest first; ``next_cursor`` is None on the last page."""
        return await take_page(self._scan(where, parse_cursor(cursor, id_prefix="dl_")), where.matches, limit=limit)

    async def all(self, where: DeadLetterFilter) -> AsyncIterator[DeadLetter]:
        async for dead, _ in self._scan(where, None):
            if dead is not None and where.matches(dead):
                yield dead

    def _scan(
        self, where: DeadLetterFilter, position: Position | None
    ) -> AsyncIterator[tuple[DeadLetter | None, Position]]:
        index = [p.dead_letters_of(where.tenant) if where.tenant else p.dead_letters for p in keys.partitions()]
        return scan(
            self._redis, index, keys.dead_letter, _decode, since=where.since, until=where.until, position=position
        )

    async def delete(self, dead: DeadLetter) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            unlink_dead_letter(pipe, dead.id, dead.tenant, dead.event.id)
            await pipe.execute()

    async def replay(self, dead: DeadLetter) -> bool:
        """Owe the same event again, on a fresh schedule; False when a replay is already in flight."""
        return (await self.replay_batch([dead]))[0]

    async def replay_batch(self, batch: Sequence[DeadLetter]) -> list[bool]:
        """Replay each of ``batch``: all are owed again (but those already in flight), or none, in one atomic step per
        partition (the dead letters of one partition are replayed together)."""
        if not batch:
            return []
        groups: dict[int, list[int]] = {}
        for i, dead in enumerate(batch):
            groups.setdefault(keys.of(dead.id).index, []).append(i)
        out = [False] * len(batch)
        for members in groups.values():
            replayed = await self._replay_group([batch[i] for i in members])
            for i, done in zip(members, replayed, strict=True):
                out[i] = done
        return out

    async def _replay_group(self, batch: Sequence[DeadLetter]) -> list[bool]:
        part = keys.of(batch[0].id)
        at = datetime.now(UTC)  # the replayed step's time, which people read (the step owes it by Redis's clock)
        events: list[str | bytes] = []
        for dead in batch:
            delivery = PendingDelivery(
                tenant=dead.tenant,
                task_id=dead.task_id,
                url=dead.url,
                event=dead.event,
                attempts=dead.attempts,
                first_attempt_at=dead.first_attempt_at,
                dead_letter_id=dead.id,
                replays=dead.replays,
            )
            step = DeliveryStep(
                event_id=dead.event.id, step=StepKind.REPLAYED, at=at, dead_letter_id=dead.id, reason=dead.reason
            )
            events += [dead.event.id, _encode(delivery), _encode(step)]
        steps = [keys.delivery_steps(dead.task_id) for dead in batch]
        replayed = await self._replay(
            keys=wire(ReplayKeys(part.due, part.stats, steps)),
            args=wire(ReplayArgs("", part.delivery_prefix, metrics.REPLAYED, self._outbox.attempts_ttl_s, events)),
        )
        return [bool(r) for r in replayed]
