"""Each task's event log and attempt log in Redis.

Events are appended (and published for live followers) in the same transaction that changes the task,
before anything is sent, so every event that is ever delivered can also be read back and resumed from.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from delivery.records import PendingDelivery
from schemas.deliveries import Attempt
from schemas.events import Event

_encode = msgspec.json.Encoder().encode
_decode_events = msgspec.json.Decoder(Event).decode
_decode_attempt = msgspec.json.Decoder(Attempt).decode


_APPEND_LUA = Path(__file__).with_name("append_event.lua").read_text()


class EventLog:
    def __init__(self, *, redis: aioredis.Redis, retention_s: int) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._append = redis.register_script(_APPEND_LUA)

    async def append(
        self,
        event: Event,
        *,
        task_key: str,
        task_state: bytes,
        task_ttl_s: int,
        stats_field: str | None = None,
        webhook: PendingDelivery | None = None,
        lease_until: float = 0.0,
        tenant: str = "",
    ) -> bytes | None:
        """Store the task's new state, append ``event`` to its log and publish it, in one step.

        With ``webhook``, the webhook is owed too, leased to the caller until ``lease_until``; then the
        tenant's stored signing secrets come back, so the caller can attempt it without another round trip.
        """
        body = _encode(event)
        secrets = await self._append(
            keys=[
                task_key,
                keys.events(event.task_id),
                keys.STATS,
                keys.delivery(event.id),
                keys.DUE,
                keys.secrets(tenant),
            ],
            args=[
                task_state,
                task_ttl_s,
                body,
                self._retention_s,
                keys.task_channel(event.task_id),
                stats_field or "",
                _encode(webhook) if webhook is not None else "",
                lease_until,
                event.id,
            ],
        )
        return secrets if isinstance(secrets, bytes) else None

    async def events_after(self, task_id: str, after_seq: int = 0) -> list[Event]:
        """Retained events with ``seq > after_seq``, oldest first."""
        raw = await self._redis.lrange(keys.events(task_id), max(0, after_seq - 1), -1)
        events = [_decode_events(r) for r in raw]
        return [e for e in events if e.seq > after_seq]

    async def attempts(self, task_id: str) -> list[Attempt]:
        raw = await self._redis.lrange(keys.attempts(task_id), 0, -1)
        return [_decode_attempt(r) for r in raw]
