"""The durable webhook schedule.

A delivery's record (``relay:dlv:{event_id}``) is written in the same step as its event. While it waits for a
socket's ack it sits in ``relay:due``; once a webhook is owed it belongs to its destination (see
:mod:`delivery.destinations`), whose keys hold it until it is delivered or dead. Workers lease attempts (the
destination counts them in flight, cluster-wide), make them, and write the outcome: delivered (gone), retry (due
again later) or dead (a dead letter). Nothing waits in a worker's memory; a worker killed mid-attempt loses only
its lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.destinations import (
    CLAIM_DESTINATIONS,
    FlowSettings,
    breaker_outcome,
    destination_for,
)
from delivery.ids import new_id
from delivery.outbox_steps import (
    ACK,
    CLAIM,
    CLAIM_READY,
    HANDOFF,
    RECORD,
    TRIM_DEAD_LETTERS,
    AckArgs,
    AckKeys,
    ClaimArgs,
    ClaimKeys,
    HandoffArgs,
    HandoffKeys,
    ReadyArgs,
    ReadyKeys,
    RecordArgs,
    RecordKeys,
    RecordReply,
    TrimArgs,
    TrimKeys,
)
from delivery.policy import MAX_RETRY_AFTER_S, AttemptResult, Decision, Verdict
from delivery.records import PendingDelivery, count_unreadable, decode_or_skip
from delivery.redis_client import as_text
from delivery.scripts import wire
from delivery.signing_secrets import live_secrets, read_apart
from schemas.dead_letters import DeadLetter
from schemas.deliveries import Attempt, Channel, DeliveryOutcome, DeliveryStep, StepKind

_encode = msgspec.json.Encoder().encode
_decode_delivery = msgspec.json.Decoder(PendingDelivery).decode


class Kind:
    SEND = "send"
    PROBE = "probe"  # the one attempt an open destination lets through
    EXPIRE = "expire"  # held past its retry span: dead-lettered without an attempt


@dataclass(frozen=True, slots=True)
class Lease:
    """A webhook attempt leased to this process, with the token that fences its outcome."""

    delivery: PendingDelivery
    token: str
    kind: str = Kind.SEND
    secrets: list[str] | None = None  # the tenant's live signing secrets, when they came with the lease


@dataclass(frozen=True, slots=True)
class Recorded:
    """What writing an attempt did."""

    dead: DeadLetter | None = None
    change: str = ""  # 'opened' or 'recovered' when the destination's breaker moved
    destination_id: str | None = None
    # A webhook leased to the caller in the same step: the destination's next due one, or a noted push's own.
    next: Lease | None = None


class Outbox:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        flow: FlowSettings,
        attempts_ttl_s: int,
        dead_letter_retention_s: int,
    ) -> None:
        self._redis = redis
        self._flow = flow
        self._lease_s = flow.lease_s
        self._attempts_ttl_s = attempts_ttl_s
        self._dead_letter_retention_s = dead_letter_retention_s
        self._claim = CLAIM.bind(redis)
        self._record = RECORD.batched(redis)
        self._claim_destinations = CLAIM_READY.bind(redis)
        self._handoff = HANDOFF.bind(redis)
        self._ack = ACK.batched(redis)

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def attempts_ttl_s(self) -> int:
        """How long a task's attempts (and its delivery steps) are kept after the last one."""
        return self._attempts_ttl_s

    async def claim(
        self, partition: keys.Partition, *, limit: int, now: float | None = None
    ) -> list[tuple[PendingDelivery, bool]]:
        """Lease up to ``limit`` due deliveries of ``partition``; each comes with True when its WebSocket ack never
        came."""
        raw = await self._claim(
            keys=wire(ClaimKeys(partition.due)),
            args=wire(
                ClaimArgs(
                    now="" if now is None else now,
                    limit=limit,
                    lease_s=self._lease_s,
                    delivery_prefix=partition.delivery_prefix,
                    ack_prefix=partition.ack_prefix,
                )
            ),
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
            await self._redis.zrem(partition.due, *unreadable)
            await count_unreadable(self._redis, len(unreadable))
        return claimed

    async def claim_destinations(
        self, partition: keys.Partition, *, limit: int, now: float | None = None
    ) -> list[Lease]:
        """Lease up to ``limit`` attempts that the ready destinations of ``partition`` let start now."""
        flow_now, flow_settings = self._flow.header(now)
        raw = await self._claim_destinations(
            keys=wire(ReadyKeys(partition.destinations_ready)),
            args=wire(
                ReadyArgs(
                    flow_now=flow_now,
                    flow_settings=flow_settings,
                    budget=limit,
                    most_destinations=CLAIM_DESTINATIONS,
                    delivery_prefix=partition.delivery_prefix,
                )
            ),
        )
        leases: list[Lease] = []
        for i in range(0, len(raw), 5):
            event_id = as_text(raw[i + 1])
            delivery = decode_or_skip(_decode_delivery, raw[i + 4], key=keys.delivery(event_id))
            if delivery is None:
                await self._drop_unreadable(as_text(raw[i]), event_id)
            else:
                leases.append(Lease(delivery=delivery, token=as_text(raw[i + 3]), kind=as_text(raw[i + 2])))
        return leases

    async def handoff(self, delivery: PendingDelivery) -> Lease | None:
        """Owe ``delivery`` (from the general schedule) to its destination; a lease when it may start at once."""
        assert delivery.url is not None
        dst = destination_for(delivery.tenant, delivery.url)
        flow_now, flow_settings = self._flow.header()
        reply = await self._handoff(
            keys=wire(HandoffKeys(keys.of(delivery.event_id).due, keys.delivery(delivery.event_id), *dst.keys)),
            args=wire(
                HandoffArgs(
                    flow_now=flow_now,
                    flow_settings=flow_settings,
                    event_id=delivery.event_id,
                    destination_id=dst.id,
                    destination_tenant=dst.tenant,
                    destination_origin=dst.origin,
                    untried_replay=_untried_replay(delivery),
                )
            ),
        )
        if as_text(reply[0]) == "admitted":
            return Lease(delivery=delivery, token=as_text(reply[1]))
        return None

    async def ack(
        self, *, event_id: str, task_id: str, tenant: str, created_at: float, has_webhook: bool, duration_ms: float
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
            keys=wire(AckKeys.of(event_id, task_id, tenant)),
            args=wire(
                AckArgs(
                    event_id=event_id,
                    attempts_ttl_s=self._attempts_ttl_s,
                    acked=_encode(acked),
                    skipped=_encode(skipped) if skipped is not None else "",
                    latency_bucket=metrics.latency_bucket(latency_s),
                    latency_s=latency_s,
                    acked_counter=metrics.delivery_counter(Channel.WEBSOCKET, DeliveryOutcome.ACKED),
                    skipped_counter=metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.SKIPPED),
                )
            ),
        )
        return bool(settled)

    async def record(
        self,
        delivery: PendingDelivery,
        attempt: Attempt | None,
        decision: Decision,
        *,
        token: str = "",
        result: AttemptResult | None = None,
        now: float | None = None,
    ) -> Recorded:
        """Write an attempt (None: none was made) and what follows it in one step.

        ``token`` is the lease the attempt was made under and ``result`` what came back (it moves the
        destination's breaker); an outcome written under a lease another attempt holds now is only noted.

        The step schedules by Redis's clock (``now`` stands in for it when given): a retry's delay and a
        Retry-After hold go as durations. This host's clock gives only what people read (the attempt's and the dead
        letter's times) and the latency figures.
        """
        moment = time.time() if now is None else now
        if attempt is not None and attempt.channel is Channel.WEBHOOK:
            delivery.attempts = attempt.attempt
            delivery.run_attempts += 1 if decision.counted else 0
            delivery.last_status_code = attempt.status_code
            delivery.last_error = attempt.error
            if delivery.first_attempt_at is None:
                delivery.first_attempt_at = attempt.at
        dst = destination_for(delivery.tenant, delivery.url) if delivery.url else None
        outcome, hold_s = "none", ""
        if result is not None:
            outcome = breaker_outcome(result)
            if result.status_code in (429, 503) and result.retry_after_s is not None:
                hold_s = repr(min(result.retry_after_s, MAX_RETRY_AFTER_S))
        dead: DeadLetter | None = None
        dl_id = delivery.dead_letter_id or ""
        flow_now, flow_settings = self._flow.header(now)
        args = RecordArgs(
            flow_now=flow_now,
            flow_settings=flow_settings,
            attempt=_encode(attempt) if attempt is not None else "",
            attempts_ttl_s=self._attempts_ttl_s,
            attempt_counter=metrics.delivery_counter(attempt.channel, attempt.outcome) if attempt is not None else "",
            verdict=decision.verdict.value,
            event_id=delivery.event_id,
            destination_id=dst.id if dst else "",
            destination_tenant=dst.tenant if dst else "",
            destination_origin=dst.origin if dst else "",
            token=token,
            outcome=outcome,
            error=(attempt.error or "") if attempt is not None else "",
            hold_s=hold_s,
            skipped_counter=metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.SKIPPED),
            at=datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z"),
        )
        if decision.verdict is Verdict.RETRY:
            args.retry_delivery = _encode(delivery)
            args.retry_in_s = decision.delay_s
        elif decision.verdict in (Verdict.DROPPED, Verdict.NOTED):
            pass
        elif decision.verdict is Verdict.DELIVERED:
            latency_s = max(0.0, moment - delivery.event.created_at.timestamp())
            args.latency_bucket = metrics.latency_bucket(latency_s)
            args.latency_s = latency_s
            args.dead_letter_id = dl_id
        else:
            assert decision.reason is not None
            dead = DeadLetter(
                id=dl_id or new_id("dl", keys.of(delivery.event_id)),
                tenant=delivery.tenant,
                task_id=delivery.task_id,
                event=delivery.event,
                url=delivery.url or "",
                reason=decision.reason,
                attempts=delivery.attempts,
                last_status_code=attempt.status_code if attempt is not None else delivery.last_status_code,
                last_error=attempt.error if attempt is not None else delivery.last_error,
                first_attempt_at=delivery.first_attempt_at or datetime.fromtimestamp(moment, UTC),
                dead_at=datetime.fromtimestamp(moment, UTC),
                replays=delivery.replays + (1 if delivery.dead_letter_id else 0),
            )
            dl_id = dead.id
            args.dead_letter_id = dl_id
            args.dead_letter = _encode(dead)
            args.dead_at_ms = dead.dead_at.timestamp() * 1000
            args.dead_lettered_counter = metrics.DEAD_LETTERED
            args.dead_letter_retention_s = self._dead_letter_retention_s
            args.dead_letter_counter = metrics.dead_letter_counter(decision.reason.value)
            args.dead_step = _encode(
                DeliveryStep(
                    event_id=delivery.event_id,
                    step=StepKind.DEAD_LETTERED,
                    at=dead.dead_at,
                    dead_letter_id=dl_id,
                    reason=dead.reason,
                )
            )
        single = keys.layout().single
        reply = RecordReply.read(
            await self._record(keys=wire(RecordKeys.of(delivery, dl_id, dst, single=single)), args=wire(args))
        )
        following = None
        if reply.next_id and dst is not None:
            next_delivery = decode_or_skip(_decode_delivery, reply.next_record, key=keys.delivery(reply.next_id))
            if next_delivery is None:
                await self._drop_unreadable(dst.id, reply.next_id)
            else:
                raw_secrets = reply.secrets
                if not single:
                    raw_secrets = await read_apart(self._redis.get(keys.secrets(next_delivery.tenant)))
                following = Lease(delivery=next_delivery, token=reply.next_token, secrets=live_secrets(raw_secrets))
        return Recorded(
            dead=dead if reply.status == "ok" else None,
            change=reply.change,
            destination_id=dst.id if dst else None,
            next=following,
        )

    async def _drop_unreadable(self, dst_id: str, event_id: str) -> None:
        """Take a webhook whose record cannot be read out of its destination: it would come back every lease and
        fail again (its record stays, logged)."""
        _, _, flight, deadline = keys.destination_keys(dst_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(flight, event_id)
            pipe.zrem(deadline, event_id)
            await pipe.execute()
        await count_unreadable(self._redis, 1)


def _untried_replay(delivery: PendingDelivery) -> str:
    """'replay' for a replayed dead letter not attempted since (it is owed a real attempt before it may expire)."""
    return "replay" if delivery.dead_letter_id is not None and delivery.run_attempts == 0 else ""


async def trim_dead_letter_index(
    redis: aioredis.Redis, partition: keys.Partition, *, retention_s: int, now: float | None = None
) -> int:
    """Drop index entries of ``partition``'s dead letters older than the retention (their records have expired), by
    Redis's clock (``now`` stands in for it)."""
    trim = TRIM_DEAD_LETTERS.bind(redis)
    return int(
        await trim(
            keys=wire(TrimKeys(partition.dead_letters)), args=wire(TrimArgs(retention_s, "" if now is None else now))
        )
    )


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
    part = keys.of(dl_id)
    pipe.delete(keys.dead_letter(dl_id))
    pipe.zrem(part.dead_letters, dl_id)
    pipe.zrem(part.dead_letters_of(tenant), dl_id)
    pipe.delete(keys.dead_letter_of_event(event_id))
