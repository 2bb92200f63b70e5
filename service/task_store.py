"""Task records in Redis, and the writes that move a task through its states.

Every state change that produces an event (progress, completion, failure) is one transaction that
updates the task, appends the event to the log, publishes it and, for a final event with a webhook,
stages the webhook in the durable schedule.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.event_log import EventLog
from delivery.ids import new_id
from delivery.records import PendingDelivery
from delivery.signing_secrets import live_secrets
from schemas.events import Event, EventType
from schemas.tasks import Progress, Task, TaskError, TaskRecord, TaskStatus

# How long an Idempotency-Key keeps answering with the first task.
IDEMPOTENCY_TTL_S = 24 * 3600

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TaskRecord).decode
_decode_task = msgspec.json.Decoder(Task).decode


def _decode_answer(raw: bytes | str) -> Task | None:
    try:
        return _decode_task(raw)
    except msgspec.DecodeError:  # a key written before answers were kept: treat it as unused
        return None


_ALLOWED = {
    TaskStatus.QUEUED: {TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED},
    TaskStatus.RUNNING: {TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED},
    TaskStatus.SUCCEEDED: set(),
    TaskStatus.FAILED: set(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, task_id: str, old: TaskStatus, new: TaskStatus) -> None:
        super().__init__(f"task {task_id} cannot go from {old.value} to {new.value}")


def move(record: TaskRecord, status: TaskStatus) -> None:
    if status not in _ALLOWED[record.status]:
        raise IllegalTransition(record.id, record.status, status)
    record.status = status


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TaskStore:
    def __init__(
        self, *, redis: aioredis.Redis, record_ttl_s: int, retention_s: int, ack_timeout_s: float = 10.0
    ) -> None:
        self._redis = redis
        self._record_ttl_s = record_ttl_s
        self._ack_timeout_s = ack_timeout_s
        self._log = EventLog(redis=redis, retention_s=retention_s)

    async def get(self, task_id: str) -> TaskRecord | None:
        raw = await self._redis.get(keys.task(task_id))
        return _decode(raw) if raw else None

    async def create(
        self,
        record: TaskRecord,
        *,
        idempotency_key: str | None,
        enqueue: Callable[[Any, str], Awaitable[None]] | None = None,
    ) -> Task:
        """Store a new task and return the answer to its submission.

        With an Idempotency-Key this tenant already used, nothing is stored and the first submission's answer
        comes back as it was given. ``enqueue(pipe, task_id)`` may add the broker's enqueue command to the same
        round trip, after the record.
        """
        answer = record.public()
        if idempotency_key is not None:
            idem = keys.idempotency(record.tenant, idempotency_digest(idempotency_key))
            # Stored before the claim, so that a concurrent request that loses the claim finds this record
            # (otherwise it sees the key but no task yet, takes the key over and runs the task twice).
            await self._redis.set(keys.task(record.id), _encode(record), ex=self._record_ttl_s)
            claimed = await self._redis.set(idem, _encode(answer), nx=True, ex=IDEMPOTENCY_TTL_S)
            if not claimed:
                raw = await self._redis.get(idem)
                first = _decode_answer(raw) if raw else None
                if first is not None and await self._redis.exists(keys.task(first.id)):
                    await self._redis.delete(keys.task(record.id))
                    return first
                await self._redis.set(idem, _encode(answer), ex=IDEMPOTENCY_TTL_S)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.task(record.id), _encode(record), ex=self._record_ttl_s)
            pipe.hincrby(keys.STATS, metrics.task_counter("submitted"), 1)
            if enqueue is not None:
                await enqueue(pipe, record.id)
            await pipe.execute()
        return answer

    async def discard(self, record: TaskRecord) -> None:
        """Forget a task that could not be enqueued (its submitter got an error, not a 202)."""
        await self._redis.delete(keys.task(record.id))

    async def mark_running(self, record: TaskRecord) -> None:
        move(record, TaskStatus.RUNNING)
        record.started_at = record.started_at or datetime.now(UTC)
        await self._redis.set(keys.task(record.id), _encode(record), ex=self._record_ttl_s)

    async def report_progress(self, record: TaskRecord, percent: float, message: str | None) -> Event:
        record.progress = Progress(percent=percent, message=message)
        event = self._next_event(record, EventType.PROGRESS, {"percent": percent, "message": message})
        await self._log.append(
            event, task_key=keys.task(record.id), task_state=_encode(record), task_ttl_s=self._record_ttl_s
        )
        return event

    async def finish(
        self, record: TaskRecord, *, result: Any = None, error: TaskError | None = None, lease_s: float
    ) -> tuple[Event, PendingDelivery | None, list[str]]:
        """Record the final state and its event; stage the webhook leased to the caller.

        Returns the event, the webhook leased to the caller (None when there is none, or when it waits for a
        WebSocket ack first) and the tenant's live signing secrets, so that the caller can attempt the webhook at
        once without another round trip.
        """
        status = TaskStatus.FAILED if error is not None else TaskStatus.SUCCEEDED
        move(record, status)
        record.finished_at = datetime.now(UTC)
        if error is None:
            record.result = result
            event_type, data = EventType.COMPLETED, {"status": status.value, "result": result}
        else:
            record.error = error
            event_type, data = EventType.FAILED, {"status": status.value, "error": msgspec.to_builtins(error)}
        event = self._next_event(record, event_type, data)
        delivery = None
        if record.webhook is not None or record.websocket:
            url = record.webhook.url if record.webhook is not None else None
            delivery = PendingDelivery(tenant=record.tenant, task_id=record.id, url=url, event=event)
        now = time.time()
        owed = await self._log.append(
            event,
            task_key=keys.task(record.id),
            task_state=_encode(record),
            task_ttl_s=self._record_ttl_s,
            stats_field=metrics.task_counter(status.value),
            delivery=delivery,
            websocket=record.websocket,
            lease_until=now + lease_s,
            ack_due_at=now + self._ack_timeout_s,
        )
        if owed is None or owed.pushed:
            return event, None, []
        return event, delivery, live_secrets(owed.raw_secrets)

    @staticmethod
    def _next_event(record: TaskRecord, event_type: EventType, data: Any) -> Event:
        record.last_seq += 1
        return Event(
            id=new_id("evt"),
            type=event_type,
            task_id=record.id,
            seq=record.last_seq,
            created_at=datetime.now(UTC),
            data=data,
        )
