"""Each task's event log and attempt log in Redis.

Events are appended (and published for live followers) in the same transaction that changes the task,
before anything is sent, so every event that is ever delivered can also be read back and resumed from.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from schemas.deliveries import Attempt
from schemas.events import Event

_encode = msgspec.json.Encoder().encode
_decode_events = msgspec.json.Decoder(Event).decode
_decode_attempt = msgspec.json.Decoder(Attempt).decode


def stage_event(pipe: Any, event: Event, *, retention_s: int) -> bytes:
    """Append ``event`` to its task's log and publish it; returns the encoded event."""
    body = _encode(event)
    pipe.rpush(keys.events(event.task_id), body)
    pipe.expire(keys.events(event.task_id), retention_s)
    pipe.publish(keys.task_channel(event.task_id), body)
    return body


def stage_attempt(pipe: Any, task_id: str, attempt: Attempt, *, ttl_s: int) -> None:
    pipe.rpush(keys.attempts(task_id), _encode(attempt))
    pipe.expire(keys.attempts(task_id), ttl_s)


class EventLog:
    def __init__(self, *, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def events_after(self, task_id: str, after_seq: int = 0) -> list[Event]:
        """Retained events with ``seq > after_seq``, oldest first."""
        raw = await self._redis.lrange(keys.events(task_id), max(0, after_seq - 1), -1)
        events = [_decode_events(r) for r in raw]
        return [e for e in events if e.seq > after_seq]

    async def attempts(self, task_id: str) -> list[Attempt]:
        raw = await self._redis.lrange(keys.attempts(task_id), 0, -1)
        return [_decode_attempt(r) for r in raw]
