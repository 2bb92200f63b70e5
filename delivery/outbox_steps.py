"""The Lua steps of the outbox (claims, hand-offs, acks, recorded attempts, trims), each with the Structs of its
keys, arguments and reply. :class:`delivery.outbox.Outbox` binds them; the scripts sit beside this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from delivery import keys
from delivery.destinations import NO_DESTINATION, DestinationRef
from delivery.records import PendingDelivery
from delivery.redis_client import as_text
from delivery.scripts import StepArgs, StepKeys, step


class ClaimKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``claim_due.lua``: a partition's schedule of due deliveries."""

    due: str


class ClaimArgs(StepArgs, array_like=True, gc=False):
    now: float | str  # '' for Redis's clock
    limit: int
    lease_s: float
    delivery_prefix: str
    ack_prefix: str


class ReadyKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``claim_destinations.lua``: a partition's ready destinations (the rest it derives from there)."""

    ready: str


class ReadyArgs(StepArgs, array_like=True, gc=False):
    flow_now: str
    flow_settings: str
    budget: int
    most_destinations: int
    delivery_prefix: str


class HandoffKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``handoff.lua``: the general schedule, the delivery and its destination's."""

    due: str
    delivery: str
    dst_meta: str
    dst_due: str
    dst_flight: str
    dst_deadline: str


class HandoffArgs(StepArgs, array_like=True, gc=False):
    flow_now: str
    flow_settings: str
    event_id: str
    destination_id: str
    destination_tenant: str
    destination_origin: str
    untried_replay: str


class AckKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``ack.lua``: the event's ack marker and delivery, its task's attempts and line, the counters."""

    ack_marker: str
    due: str
    delivery: str
    attempts: str
    stats: str
    latency: str
    webhook_head: str
    webhook_line: str
    tenant_stats: str

    @classmethod
    def of(cls, event_id: str, task_id: str, tenant: str) -> AckKeys:
        part = keys.of(event_id)
        return cls(
            ack_marker=keys.ack_marker(event_id),
            due=part.due,
            delivery=keys.delivery(event_id),
            attempts=keys.attempts(task_id),
            stats=part.stats,
            latency=part.latency,
            webhook_head=keys.webhook_head(task_id),
            webhook_line=keys.webhook_line(task_id),
            tenant_stats=part.stats_of(tenant),
        )


class AckArgs(StepArgs, array_like=True, gc=False):
    event_id: str
    attempts_ttl_s: int
    acked: bytes
    skipped: bytes | str
    latency_bucket: str
    latency_s: float
    acked_counter: str
    skipped_counter: str


class TrimKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``trim_dead_letters.lua``: one dead-letter index."""

    index: str


class TrimArgs(StepArgs, array_like=True, gc=False):
    retention_s: int
    now: float | str  # '' for Redis's clock


CLAIM = step(__file__, "claim_due.lua", keys=ClaimKeys, args=ClaimArgs)
CLAIM_READY = step(__file__, "claim_destinations.lua", flow=True, keys=ReadyKeys, args=ReadyArgs)
HANDOFF = step(__file__, "handoff.lua", flow=True, keys=HandoffKeys, args=HandoffArgs)
ACK = step(__file__, "ack.lua", flow=True, keys=AckKeys, args=AckArgs)
TRIM_DEAD_LETTERS = step(__file__, "trim_dead_letters.lua", keys=TrimKeys, args=TrimArgs)


class RecordKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``record_attempt.lua``: the delivery's, its task's, its destination's and its dead letter's."""

    attempts: str
    stats: str
    due: str
    delivery: str
    latency: str
    dead_letter: str
    dead_letters: str
    tenant_dead_letters: str
    dead_letter_of_event: str
    dst_meta: str
    dst_due: str
    dst_flight: str
    dst_deadline: str
    secrets: str  # the tenant's signing secrets on one partition (for the next webhook leased); else nothing
    webhook_head: str
    webhook_line: str
    tenant_stats: str
    steps: str

    @classmethod
    def of(cls, delivery: PendingDelivery, dl_id: str, dst: DestinationRef | None, *, single: bool) -> RecordKeys:
        part = keys.of(delivery.event_id)
        dst_meta, dst_due, dst_flight, dst_deadline = dst.keys if dst else part.destination_keys(NO_DESTINATION)
        return cls(
            attempts=keys.attempts(delivery.task_id),
            stats=part.stats,
            due=part.due,
            delivery=keys.delivery(delivery.event_id),
            latency=part.latency,
            dead_letter=keys.dead_letter(dl_id) if dl_id else part.nothing,
            dead_letters=part.dead_letters,
            tenant_dead_letters=part.dead_letters_of(delivery.tenant),
            dead_letter_of_event=keys.dead_letter_of_event(delivery.event_id),
            dst_meta=dst_meta,
            dst_due=dst_due,
            dst_flight=dst_flight,
            dst_deadline=dst_deadline,
            secrets=keys.secrets(delivery.tenant) if single else part.nothing,
            webhook_head=keys.webhook_head(delivery.task_id),
            webhook_line=keys.webhook_line(delivery.task_id),
            tenant_stats=part.stats_of(delivery.tenant),
            steps=keys.delivery_steps(delivery.task_id),
        )


class RecordArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``record_attempt.lua`` (its header says what each means). Those of one verdict only are
    set after the others, by verdict; the rest stay empty."""

    flow_now: str
    flow_settings: str
    attempt: bytes | str
    attempts_ttl_s: int
    attempt_counter: str
    verdict: str
    event_id: str
    destination_id: str
    destination_tenant: str
    destination_origin: str
    token: str
    outcome: str
    error: str
    hold_s: str  # a Retry-After: how long the destination is held
    skipped_counter: str
    at: str
    retry_delivery: bytes | str = ""
    retry_in_s: float | str = ""  # counted from Redis's clock in the step
    latency_bucket: str = ""
    latency_s: float | str = ""
    dead_letter_id: str = ""
    dead_letter: bytes | str = ""
    dead_at_ms: float | str = ""
    dead_lettered_counter: str = ""
    dead_letter_retention_s: int | str = ""
    dead_letter_counter: str = ""
    dead_step: bytes | str = ""


@dataclass(frozen=True, slots=True)
class RecordReply:
    """What ``record_attempt.lua`` answered: 'ok' or 'fenced', the breaker's change, and the destination's next
    webhook when it leased one to the caller (its event id, record, lease and, on one partition, the secrets)."""

    status: str
    change: str
    next_id: str = ""
    next_record: Any = None
    next_token: str = ""
    secrets: bytes | None = None

    @classmethod
    def read(cls, reply: Sequence[Any]) -> RecordReply:
        if len(reply) <= 2:
            return cls(as_text(reply[0]), as_text(reply[1]))
        secrets = reply[5] if isinstance(reply[5], bytes) else None
        return cls(as_text(reply[0]), as_text(reply[1]), as_text(reply[2]), reply[3], as_text(reply[4]), secrets)


RECORD = step(__file__, "record_attempt.lua", flow=True, keys=RecordKeys, args=RecordArgs)
