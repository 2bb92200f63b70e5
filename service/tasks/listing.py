"""Lists of tasks, newest first: a tenant's own, or every tenant's for an operator.

Each submission enters two time indexes in the step that stores it (``relay:tasks:all`` and the tenant's),
scored by ``created_at``; entries whose record has expired are trimmed by later submissions and skipped when
met. ``status`` and ``kind`` are read from the records themselves, but only from their first bytes: a record
is encoded in field order, and its ``id``, ``kind`` and ``status`` come before its input (see
:class:`schemas.tasks.Task`). A task that a filter leaves out therefore costs :data:`HEAD_BYTES` of Redis's
answer, whatever its input or result weighs; only the tasks a page returns are read whole.

A page reads at most :data:`MAX_PAGE_BYTES` of whole records (and always at least one, so that a list moves on):
a page of large tasks is shorter than ``limit``, with a cursor that goes on from the last task it looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from delivery.records import count_unreadable, decode_or_skip, get_many
from delivery.time_index import MAX_SCAN_PER_PAGE, Position, format_cursor, parse_cursor, rows
from schemas.tasks import TaskRecord, TaskStatus

# The first bytes of a record read to filter it: its id, kind and status with room to spare (a longer head, a
# kind name of a few hundred characters, is read whole instead).
HEAD_BYTES = 256
# Most bytes of whole records one page reads (the answer carries them); past it the page ends with a cursor.
MAX_PAGE_BYTES = 4 * 1024 * 1024

_decode = msgspec.json.Decoder(TaskRecord).decode
# What ends a record's head: the member that follows its status.
_HEAD_END = b',"input":'


class _Head(msgspec.Struct):
    """What a filter reads of a task record; the fields a record begins with."""

    id: str
    kind: str
    status: TaskStatus


_decode_head = msgspec.json.Decoder(_Head).decode


def read_head(prefix: bytes, task_id: str) -> _Head | None:
    """The id, kind and status at the start of a task record, or None when ``prefix`` does not hold them all (a
    long kind name, or a record laid out otherwise): that record is then read whole."""
    end = prefix.find(_HEAD_END)
    if end < 0:
        return None
    try:
        head = _decode_head(prefix[:end] + b"}")
    except msgspec.DecodeError:  # ValidationError among them: a status this version does not know
        return None
    return head if head.id == task_id else None


@dataclass(frozen=True, slots=True)
class TaskFilter:
    tenant: str | None = None
    status: TaskStatus | None = None
    kind: str | None = None
    since: datetime | None = None  # on created_at, inclusive
    until: datetime | None = None  # on created_at, exclusive

    def matches(self, record: TaskRecord) -> bool:
        return (
            (self.tenant is None or record.tenant == self.tenant)
            and (self.status is None or record.status is self.status)
            and (self.kind is None or record.kind == self.kind)
        )

    def may_match(self, head: _Head) -> bool:
        """False when the head alone rules the task out (the tenant is the index's)."""
        return (self.status is None or head.status is self.status) and (self.kind is None or head.kind == self.kind)


@dataclass(slots=True)
class _Entry:
    position: Position
    size: int  # bytes of its record (0: gone)
    head: _Head | None


class TaskList:
    def __init__(self, *, redis: aioredis.Redis, max_page_bytes: int = MAX_PAGE_BYTES) -> None:
        self._redis = redis
        self._max_page_bytes = max_page_bytes

    async def page(
        self, where: TaskFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[TaskRecord], str | None]:
        """Newest first; ``next_cursor`` is None on the last page. Raises ``InvalidCursor``.

        A page looks at up to ``MAX_SCAN_PER_PAGE`` entries and reads up to ``max_page_bytes`` of whole records;
        whichever bound it meets first ends it short of ``limit``, with a cursor.
        """
        position = parse_cursor(cursor, id_prefix="task_")
        index = [p.tasks_of(where.tenant) if where.tenant else p.tasks for p in keys.partitions()]
        items: list[TaskRecord] = []
        scanned = 0
        spent = 0  # bytes of whole records read
        last: Position | None = None  # the last entry looked at
        async for batch in rows(self._redis, index, since=where.since, until=where.until, position=position):
            entries = await self._heads(batch, filtered=where.status is not None or where.kind is not None)
            i = 0
            while i < len(entries):
                # Plan the next whole reads: the entries that may match, up to the tasks still wanted and the bytes
                # still allowed; the entries ruled out by their head on the way are looked at already.
                wanted = limit - len(items)
                planned: list[_Entry] = []
                stop = False
                while i < len(entries) and len(planned) < wanted:
                    entry = entries[i]
                    if scanned >= MAX_SCAN_PER_PAGE:
                        stop = True
                        break
                    if entry.size and (entry.head is None or where.may_match(entry.head)):
                        if spent + entry.size > self._max_page_bytes and (items or planned):
                            stop = True  # this one starts the next page
                            break
                        spent += entry.size
                        planned.append(entry)
                    scanned += 1
                    last = entry.position
                    i += 1
                items += await self._whole(planned, where)
                if stop or len(items) >= limit:
                    return items, format_cursor(last)
        return items, None

    async def _heads(self, batch: list[Position], *, filtered: bool) -> list[_Entry]:
        """The size of each entry's record, and its head when the list filters on it, in one trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, task_id in batch:
                if filtered:
                    pipe.getrange(keys.task(task_id), 0, HEAD_BYTES - 1)
                pipe.strlen(keys.task(task_id))
            replies = await pipe.execute()
        if not filtered:
            return [_Entry(position=p, size=int(size), head=None) for p, size in zip(batch, replies, strict=True)]
        entries = []
        for n, position in enumerate(batch):
            prefix, size = replies[2 * n], int(replies[2 * n + 1])
            entries.append(_Entry(position=position, size=size, head=read_head(prefix, position[1]) if size else None))
        return entries

    async def _whole(self, planned: list[_Entry], where: TaskFilter) -> list[TaskRecord]:
        """The records of ``planned`` that match, read whole in one trip."""
        if not planned:
            return []
        raws = await get_many(self._redis, [keys.task(e.position[1]) for e in planned])
        found: list[TaskRecord] = []
        unreadable = 0
        for entry, raw in zip(planned, raws, strict=True):
            if not raw:
                continue  # expired since its head was read
            record = decode_or_skip(_decode, raw, key=keys.task(entry.position[1]))
            if record is None:
                unreadable += 1
            elif where.matches(record):
                found.append(record)
        await count_unreadable(self._redis, unreadable)  # rare: the log line names each
        return found
