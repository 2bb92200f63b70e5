"""Lists of tasks, newest first: a tenant's own, or every tenant's for an operator.

Each submission enters two time indexes in the step that stores it (``relay:tasks:all`` and the tenant's),
scored by ``created_at``; entries whose record has expired are trimmed by later submissions and skipped when
met. ``status`` and ``kind`` are read from the records themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from delivery.time_index import Position, parse_cursor, scan, take_page
from schemas.tasks import TaskRecord, TaskStatus

_decode = msgspec.json.Decoder(TaskRecord).decode


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


class TaskList:
    def __init__(self, *, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def page(
        self, where: TaskFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[TaskRecord], str | None]:
        """Newest first; ``next_cursor`` is None on the last page. Raises ``InvalidCursor``."""
        position = parse_cursor(cursor, id_prefix="task_")
        return await take_page(self._scan(where, position), where.matches, limit=limit)

    def _scan(self, where: TaskFilter, position: Position | None) -> AsyncIterator[tuple[TaskRecord | None, Position]]:
        index = keys.tasks_of(where.tenant) if where.tenant else keys.TASKS
        return scan(self._redis, index, keys.task, _decode, since=where.since, until=where.until, position=position)
