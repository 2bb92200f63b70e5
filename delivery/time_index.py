"""Lists read from a time index: a sorted set of ids scored by a time in ms, newest first, page by page.

Dead letters (by when they died) and tasks (by when they were submitted) are listed this way. A cursor is the
position of the last entry a page looked at, ``<score>:<id>``; what is added later scores higher (it is newer),
so a cursor stays valid while entries arrive, and no page repeats or skips one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TypeVar, cast

import redis.asyncio as aioredis

from delivery.errors import InvalidCursor
from delivery.records import count_unreadable, decode_or_skip, get_many

# Index entries read per round trip while filtering.
SCAN_BATCH = 500
# Entries read from each partition's index per round trip while merging several.
MERGE_BATCH = 32
# Most index entries one page may look at before it answers with what it found (and a cursor).
MAX_SCAN_PER_PAGE = 20_000

T = TypeVar("T")
Position = tuple[float, str]


def parse_cursor(cursor: str | None, *, id_prefix: str) -> Position | None:
    """The position a cursor of this list names; :class:`InvalidCursor` for anything this API did not hand out."""
    if not cursor:
        return None
    score, sep, member = cursor.partition(":")
    try:
        if not sep or not member.startswith(id_prefix) or len(member) > 64:
            raise ValueError(cursor)
        position = float(score)
        if not math.isfinite(position):
            raise ValueError(cursor)
    except ValueError:
        raise InvalidCursor(f"{cursor[:100]!r} is not a cursor from this list") from None
    return position, member


def format_cursor(position: Position | None) -> str | None:
    return None if position is None else f"{position[0]!r}:{position[1]}"


async def rows(
    redis: aioredis.Redis,
    index: str | Sequence[str],
    *,
    since: datetime | None,
    until: datetime | None,
    position: Position | None,
) -> AsyncIterator[list[Position]]:
    """The index's entries after ``position``, newest first, :data:`SCAN_BATCH` at a time, as ``(score, id)``:
    ``since`` inclusive, ``until`` exclusive. Several indexes (one per partition) are merged into one order, so
    that a cursor means the same whichever partition its entry came from."""
    if isinstance(index, str) or len(index) == 1:
        one = index if isinstance(index, str) else index[0]
        async for batch in _rows(redis, one, since=since, until=until, position=position, batch_size=SCAN_BATCH):
            yield batch
        return
    # Each partition's index is read a little at a time, as the merge needs it.
    size = max(MERGE_BATCH, SCAN_BATCH // len(index))
    sources = [_rows(redis, i, since=since, until=until, position=position, batch_size=size) for i in index]
    buffers: list[deque[Position]] = [deque() for _ in sources]
    live = set(range(len(sources)))
    out: list[Position] = []
    while True:
        for i in list(live):
            if not buffers[i]:
                try:
                    buffers[i].extend(await anext(sources[i]))
                except StopAsyncIteration:
                    live.discard(i)
        ready = [i for i, b in enumerate(buffers) if b]
        if not ready:
            break
        newest = max(ready, key=lambda i: buffers[i][0])
        out.append(buffers[newest].popleft())
        if len(out) == SCAN_BATCH:
            yield out
            out = []
    if out:
        yield out


async def _rows(
    redis: aioredis.Redis,
    index: str,
    *,
    since: datetime | None,
    until: datetime | None,
    position: Position | None,
    batch_size: int,
) -> AsyncIterator[list[Position]]:
    low: float | str = since.timestamp() * 1000 if since else "-inf"
    high: float | str = f"({until.timestamp() * 1000!r}" if until else "+inf"
    while True:
        if position is not None:
            high = position[0]
        raw_rows = await redis.zrevrangebyscore(index, high, low, start=0, num=batch_size, withscores=True)
        batch = [(float(s), m.decode()) for m, s in cast(list[tuple[bytes, float]], raw_rows)]
        if position is not None:
            # Members that share the cursor's score come in reverse order: skip up to the cursor's id.
            after = position
            batch = [(s, m) for s, m in batch if s < after[0] or m < after[1]]
        if not batch:
            return
        yield batch
        position = batch[-1]


async def scan(
    redis: aioredis.Redis,
    index: str | Sequence[str],
    record_key: Callable[[str], str],
    decode: Callable[[bytes | str], T],
    *,
    since: datetime | None,
    until: datetime | None,
    position: Position | None,
) -> AsyncIterator[tuple[T | None, Position]]:
    """Each entry after ``position``, newest first, with its record decoded (None when it is gone, or cannot be
    read: that one is logged and counted): ``since`` inclusive, ``until`` exclusive."""
    async for batch in rows(redis, index, since=since, until=until, position=position):
        records = await get_many(redis, [record_key(m) for _, m in batch])
        for (score, member), raw in zip(batch, records, strict=True):
            record = decode_or_skip(decode, raw, key=record_key(member)) if raw else None
            if raw and record is None:
                await count_unreadable(redis, 1)  # rare: the log line names it
            yield record, (score, member)


async def take_page(
    entries: AsyncIterator[tuple[T | None, Position]], matches: Callable[[T], bool], *, limit: int
) -> tuple[list[T], str | None]:
    """Up to ``limit`` matching items and the cursor after the last entry looked at (None: nothing after it).

    A page looks at most :data:`MAX_SCAN_PER_PAGE` entries: a filter that matches little answers a short page
    with a cursor rather than read the whole index in one request.
    """
    items: list[T] = []
    scanned = 0
    position: Position | None = None
    async for item, pos in entries:
        scanned += 1
        position = pos
        if item is not None and matches(item):
            items.append(item)
            if len(items) == limit:
                break
        if scanned >= MAX_SCAN_PER_PAGE:
            break
    else:
        return items, None
    return items, format_cursor(position)
