"""The dead-letter store: find, show, replay and purge webhooks that could not be delivered."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.errors import InvalidCursor, UnreadableRecord
from delivery.outbox import Outbox, unlink_dead_letter
from delivery.records import DECODE_ERRORS, PendingDelivery, count_unreadable, decode_or_skip, owner_of
from schemas.dead_letters import DeadLetter, DeadLetterReason

# Index entries read per round trip while filtering.
SCAN_BATCH = 500
# Most index entries one page may look at before it answers with what it found (and a cursor).
MAX_SCAN_PER_PAGE = 20_000

# Dead letters replayed in one atomic step by a bulk replay.
REPLAY_BATCH = 200

_decode = msgspec.json.Decoder(DeadLetter).decode
_encode = msgspec.json.Encoder().encode
_REPLAY_LUA = Path(__file__).with_name("replay.lua").read_text()


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
        self._replay = redis.register_script(_REPLAY_LUA)

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
            pipe.zrem(keys.DEAD_LETTERS, dl_id)
            await pipe.execute()

    async def page(
        self, where: DeadLetterFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """Newest first; ``next_cursor`` is None on the last page."""
        items: list[DeadLetter] = []
        scanned = 0
        position = _parse_cursor(cursor)
        async for dead, pos in self._scan(where, position):
            scanned += 1
            position = pos
            if dead is not None and where.matches(dead):
                items.append(dead)
                if len(items) == limit:
                    break
            if scanned >= MAX_SCAN_PER_PAGE:
                break
        else:
            return items, None
        return items, _format_cursor(position)

    async def all(self, where: DeadLetterFilter) -> AsyncIterator[DeadLetter]:
        async for dead, _ in self._scan(where, None):
            if dead is not None and where.matches(dead):
                yield dead

    async def _scan(
        self, where: DeadLetterFilter, position: tuple[float, str] | None
    ) -> AsyncIterator[tuple[DeadLetter | None, tuple[float, str]]]:
        index = keys.dead_letters_of(where.tenant) if where.tenant else keys.DEAD_LETTERS
        low = where.since.timestamp() * 1000 if where.since else "-inf"
        # `until` is exclusive: dead letters that died before it.
        high: float | str = f"({where.until.timestamp() * 1000!r}" if where.until else "+inf"
        while True:
            if position is not None:
                high = position[0]
            raw_rows = await self._redis.zrevrangebyscore(index, high, low, start=0, num=SCAN_BATCH, withscores=True)
            rows = [(m.decode(), float(s)) for m, s in cast(list[tuple[bytes, float]], raw_rows)]
            if position is not None:
                # Members that share the cursor's score come in reverse order: skip up to the cursor's id.
                after = position
                rows = [(m, s) for m, s in rows if s < after[0] or m < after[1]]
            if not rows:
                return
            records = await self._redis.mget([keys.dead_letter(m) for m, _ in rows])
            unreadable = 0
            for (member, score), raw in zip(rows, records, strict=True):
                position = (score, member)
                dead = decode_or_skip(_decode, raw, key=keys.dead_letter(member)) if raw else None
                unreadable += raw is not None and dead is None
                yield dead, position
            await count_unreadable(self._redis, unreadable)

    async def delete(self, dead: DeadLetter) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            unlink_dead_letter(pipe, dead.id, dead.tenant, dead.event.id)
            await pipe.execute()

    async def replay(self, dead: DeadLetter) -> bool:
        """Owe the same event again, on a fresh schedule; False when a replay is already in flight."""
        return (await self.replay_batch([dead]))[0]

    async def replay_batch(self, batch: Sequence[DeadLetter]) -> list[bool]:
        """Replay each of ``batch`` in one atomic step: all are owed again (but those already in flight), or none."""
        if not batch:
            return []
        args: list[str | bytes | float] = [time.time(), keys.delivery(""), metrics.REPLAYED]
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
            args += [dead.event.id, _encode(delivery)]
        replayed = await self._replay(keys=[keys.DUE, keys.STATS], args=args)
        return [bool(r) for r in replayed]


def _parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    score, sep, member = cursor.partition(":")
    try:
        if not sep or not member.startswith("dl_") or len(member) > 64:
            raise ValueError(cursor)
        position = float(score)
        if not math.isfinite(position):
            raise ValueError(cursor)
    except ValueError:
        raise InvalidCursor(f"{cursor[:100]!r} is not a cursor from this list") from None
    return position, member


def _format_cursor(position: tuple[float, str] | None) -> str | None:
    return None if position is None else f"{position[0]!r}:{position[1]}"
