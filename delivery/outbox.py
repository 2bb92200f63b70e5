"""The durable webhook schedule: every owed webhook sits in one Redis sorted set by due time.

A record (``relay:dlv:{event_id}``) and its entry in ``relay:due`` are written in the same transaction
as the event itself. Workers claim due entries with a lease (the score moves to the end of the lease),
attempt them, and write the outcome: delivered (gone), retry (new due time) or dead (a dead letter).
Nothing waits in a worker's memory; a worker killed mid-attempt loses only its lease.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.ids import new_id
from delivery.policy import Decision, Verdict
from delivery.records import PendingDelivery, count_unreadable, decode_or_skip
from delivery.redis_client import as_text
from schemas.dead_letters import DeadLetter
from schemas.deliveries import Attempt, Channel, DeliveryOutcome

_CLAIM_LUA = Path(__file__).with_name("claim_due.lua").read_text()
_RECORD_LUA = Path(__file__).with_name("record_attempt.lua").read_text()
_ACK_LUA = Path(__file__).with_name("ack.lua").read_text()
_encode = msgspec.json.Encoder().encode
_decode_delivery = msgspec.json.Decoder(PendingDelivery).decode


class Outbox:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        lease_s: float,
        attempts_ttl_s: int,
        dead_letter_retention_s: int,
    ) -> None:
        self._redis = redis
        self._lease_s = lease_s
        self._attempts_ttl_s = attempts_ttl_s
        self._dead_letter_retention_s = dead_letter_retention_s
        self._claim = redis.register_script(_CLAIM_LUA)
        self._record = redis.register_script(_RECORD_LUA)
        self._ack = redis.register_script(_ACK_LUA)

    @property
    def lease_s(self) -> float:
        return self._lease_s

    async def claim(self, *, limit: int, now: float | None = None) -> list[tuple[PendingDelivery, bool]]:
        """Lease up to ``limit`` due deliveries; each comes with True when its WebSocket ack never came."""
        moment = time.time() if now is None else now
        raw = await self._claim(
            keys=[keys.DUE], args=[moment, limit, moment + self._lease_s, keys.delivery(""), keys.ack_marker("")]
        )
        claimed: list[tuple[PendingDelivery, bool]] = []
        unreadable: list[bytes] = []
        for i in range(0, len(raw), 3):
            delivery = decode_or_skip(_decode_delivery, raw[i + 1], key=keys.delivery(as_text(raw[i])))
            if delivery is None:
                unreadable.append(raw[i])
            else:
                claimed.append((delivery, bool(raw[i + 2])))
        if unreadable:
            # Out of the schedule: it would come back every lease and fail again (its record stays, logged).
            await self._redis.zrem(keys.DUE, *unreadable)
            await count_unreadable(self._redis, len(unreadable))
        return claimed

    async def ack(
        self, *, event_id: str, task_id: str, created_at: float, has_webhook: bool, duration_ms: float
    ) -> bool:
        """A socket acked an event: settle its delivery if it was waiting for that (True), else nothing."""
        now = datetime.now(UTC)
        acked = Attempt(
            event_id=event_id,
            channel=Channel.WEBSOCKET,
            attempt=1,
            at=now,
            outcome=DeliveryOutcome.ACKED,
            duration_ms=round(duration_ms, 3),
        )
        skipped = (
            Attempt(event_id=event_id, channel=Channel.WEBHOOK, attempt=1, at=now, outcome=DeliveryOutcome.SKIPPED)
            if has_webhook
            else None
        )
        latency_s = max(0.0, now.timestamp() - created_at)
        settled = await self._ack(
            keys=[
                keys.ack_marker(event_id),
                keys.DUE,
                keys.delivery(event_id),
                keys.attempts(task_id),
                keys.STATS,
                keys.LATENCY,
            ],
            args=[
                event_id,
                self._attempts_ttl_s,
                _encode(acked),
                _encode(skipped) if skipped is not None else "",
                metrics.latency_bucket(latency_s),
                latency_s,
                metrics.delivery_counter(Channel.WEBSOCKET, DeliveryOutcome.ACKED),
                metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.SKIPPED),
            ],
        )
        return bool(settled)

    async def record(
        self, delivery: PendingDelivery, attempt: Attempt, decision: Decision, *, now: float | None = None
    ) -> DeadLetter | None:
        """Write an attempt and what follows it in one step; return the dead letter if it died."""
        moment = time.time() if now is None else now
        if attempt.channel is Channel.WEBHOOK:
            delivery.attempts = attempt.attempt
            delivery.run_attempts += 1
            delivery.last_status_code = attempt.status_code
            delivery.last_error = attempt.error
            if delivery.first_attempt_at is None:
                delivery.first_attempt_at = attempt.at
        dead: DeadLetter | None = None
        dl_id = delivery.dead_letter_id or ""
        args: list[Any] = [
            _encode(attempt),
            self._attempts_ttl_s,
            metrics.delivery_counter(attempt.channel, attempt.outcome),
            decision.verdict.value,
            delivery.event_id,
        ]
        if decision.verdict is Verdict.RETRY:
            args += [_encode(delivery), moment + decision.delay_s]
        elif decision.verdict in (Verdict.DROPPED, Verdict.NOTED):
            pass
        elif decision.verdict is Verdict.DELIVERED:
            latency_s = max(0.0, moment - delivery.event.created_at.timestamp())
            args += [metrics.latency_bucket(latency_s), latency_s, dl_id]
        else:
            assert decision.reason is not None
            dead = DeadLetter(
                id=dl_id or new_id("dl"),
                tenant=delivery.tenant,
                task_id=delivery.task_id,
                event=delivery.event,
                url=delivery.url or "",
                reason=decision.reason,
                attempts=delivery.attempts,
                last_status_code=attempt.status_code,
                last_error=attempt.error,
                first_attempt_at=delivery.first_attempt_at or attempt.at,
                dead_at=datetime.fromtimestamp(moment, UTC),
                replays=delivery.replays + (1 if delivery.dead_letter_id else 0),
            )
            dl_id = dead.id
            args += [
                _encode(dead),
                dl_id,
                dead.dead_at.timestamp() * 1000,
                metrics.DEAD_LETTERED,
                self._dead_letter_retention_s,
            ]
        await self._record(
            keys=[
                keys.attempts(delivery.task_id),
                keys.STATS,
                keys.DUE,
                keys.delivery(delivery.event_id),
                keys.LATENCY,
                keys.dead_letter(dl_id),
                keys.DEAD_LETTERS,
                keys.dead_letters_of(delivery.tenant),
                keys.dead_letter_of_event(delivery.event_id),
            ],
            args=args,
        )
        return dead


async def trim_dead_letter_index(redis: aioredis.Redis, *, retention_s: int, now: float | None = None) -> int:
    """Drop index entries of dead letters older than the retention (their records have expired)."""
    cutoff_ms = ((time.time() if now is None else now) - retention_s) * 1000
    return int(await redis.zremrangebyscore(keys.DEAD_LETTERS, "-inf", cutoff_ms))


def webhook_attempt(
    delivery: PendingDelivery,
    *,
    at: datetime,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    delivered: bool,
) -> Attempt:
    return Attempt(
        event_id=delivery.event_id,
        channel=Channel.WEBHOOK,
        attempt=delivery.attempts + 1,
        at=at,
        outcome=DeliveryOutcome.DELIVERED if delivered else DeliveryOutcome.FAILED,
        status_code=status_code,
        error=error,
        duration_ms=duration_ms,
    )


def unlink_dead_letter(pipe: Any, dl_id: str, tenant: str, event_id: str) -> None:
    pipe.delete(keys.dead_letter(dl_id))
    pipe.zrem(keys.DEAD_LETTERS, dl_id)
    pipe.zrem(keys.dead_letters_of(tenant), dl_id)
    pipe.delete(keys.dead_letter_of_event(event_id))
