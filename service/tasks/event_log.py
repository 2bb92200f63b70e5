"""Each task's event log and attempt log in Redis.

Events are appended (and published for live followers) in the same transaction that changes the task,
before anything is sent, so every event that is ever delivered can also be read back and resumed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.destinations import NO_DESTINATION, DestinationRef, FlowSettings, destination_for
from delivery.errors import LeaseLost, RecordChanged
from delivery.records import PendingDelivery, count_unreadable, decode_or_skip
from delivery.redis_batch import batched
from delivery.redis_client import as_text
from delivery.scripts import StepArgs, StepKeys, flag, step, wire
from schemas.deliveries import Attempt, Channel, DeliveryOutcome, DeliveryStep
from schemas.events import Event, EventType

# Events one page of GET /v1/tasks/{id}/events holds at most (and by default).
MAX_EVENTS_PER_PAGE = 1000
# Bytes of events one page reads at most (always one event at least); past it the page ends early.
MAX_EVENTS_PAGE_BYTES = 4 * 1024 * 1024

_encode = msgspec.json.Encoder().encode
_decode_events = msgspec.json.Decoder(Event).decode
_decode_attempt = msgspec.json.Decoder(Attempt).decode
_decode_step = msgspec.json.Decoder(DeliveryStep).decode


def _rfc3339_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class AppendKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``append_event.lua``: the task's, and its destination's when its event is owed by webhook."""

    task: str
    events: str
    stats: str
    delivery: str
    due: str
    secrets: str  # the tenant's signing secrets on one partition (handed back with a lease); else nothing
    subscribers: str
    ack_marker: str
    owed_tasks: str
    lease: str
    open_tasks: str  # the tenant's open tasks
    requeues: str
    dst_meta: str
    dst_due: str
    dst_flight: str
    dst_deadline: str
    scheduled_tasks: str
    webhook_head: str
    webhook_line: str
    attempts: str
    tenant_stats: str
    tenant_scheduled: str

    @classmethod
    def of(cls, task_id: str, event_id: str, tenant: str, dst: DestinationRef | None, *, single: bool) -> AppendKeys:
        part = keys.of(task_id)
        dst_meta, dst_due, dst_flight, dst_deadline = dst.keys if dst else part.destination_keys(NO_DESTINATION)
        return cls(
            task=keys.task(task_id),
            events=keys.events(task_id),
            stats=part.stats,
            delivery=keys.delivery(event_id),
            due=part.due,
            # On one partition the step reads the secrets it hands back; else they live in the tenant's own slot, and
            # the caller reads them (see ``Leased``).
            secrets=keys.secrets(tenant) if single else part.nothing,
            subscribers=keys.subscribers(task_id),
            ack_marker=keys.ack_marker(event_id),
            owed_tasks=part.owed_tasks,
            lease=keys.lease(task_id),
            open_tasks=part.open_tasks_of(tenant),
            requeues=part.requeues,
            dst_meta=dst_meta,
            dst_due=dst_due,
            dst_flight=dst_flight,
            dst_deadline=dst_deadline,
            scheduled_tasks=part.scheduled_tasks,
            webhook_head=keys.webhook_head(task_id),
            webhook_line=keys.webhook_line(task_id),
            attempts=keys.attempts(task_id),
            tenant_stats=part.stats_of(tenant),
            tenant_scheduled=part.scheduled_of(tenant),
        )


class AppendArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``append_event.lua`` (its header says what each means)."""

    record: bytes
    record_ttl_s: int
    event: bytes
    retention_s: int
    channel: str
    stats_field: str
    delivery: bytes | str
    destination_id: str
    event_id: str
    websocket: str
    ack_timeout_s: float
    has_webhook: str
    task_id: str
    run_token: str
    final: str
    flow_now: str  # the two of dst_init (see FlowSettings.header: '' for Redis's clock), or two empty
    flow_settings: str
    destination_tenant: str
    destination_origin: str
    read_state: bytes | str
    retry_in_s: str
    owed_grace_s: str
    skipped_counter: str
    at: str
    line_kind: str
    publish: str


@dataclass(frozen=True, slots=True)
class Appended:
    """What ``append_event.lua`` answered: its mode, and with ``webhook`` the lease of the webhook handed to the
    caller and (on one partition) the tenant's stored secrets."""

    mode: str
    secrets: bytes | None = None
    token: str = ""

    @classmethod
    def read(cls, reply: Sequence[Any]) -> Appended:
        mode = as_text(reply[0])
        if mode != "webhook":
            return cls(mode)
        return cls(mode, reply[1] if isinstance(reply[1], bytes) else None, as_text(reply[2]))


_APPEND = step(__file__, "append_event.lua", flow=True, keys=AppendKeys, args=AppendArgs)


class PageKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``events_page.lua``: the task's event log."""

    events: str

    @classmethod
    def of(cls, task_id: str) -> PageKeys:
        return cls(events=keys.events(task_id))


class PageArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``events_page.lua``."""

    start: int
    limit: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class EventsPage:
    """What ``events_page.lua`` answered: the events read (stored, undecoded), and whether another follows them."""

    more: bool
    events: list[bytes]

    @classmethod
    def read(cls, reply: Sequence[Any]) -> EventsPage:
        return cls(bool(int(reply[0])), reply[1])


_EVENTS_PAGE = step(__file__, "events_page.lua", keys=PageKeys, args=PageArgs)


@dataclass(frozen=True, slots=True)
class Leased:
    """A final event's webhook that ``append`` leased to the caller, to attempt at once."""

    token: str  # the lease of that attempt
    raw_secrets: bytes | None  # the tenant's stored secrets


class EventLog:
    def __init__(self, *, redis: aioredis.Redis, retention_s: int, flow: FlowSettings) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._flow = flow
        self._batch = batched(redis)
        self._append = _APPEND.batched(redis)
        self._page = _EVENTS_PAGE.batched(redis)

    async def append(
        self,
        event: Event,
        *,
        tenant: str,
        run_token: str,
        task_state: bytes,
        task_ttl_s: int,
        final: bool = False,
        stats_field: str | None = None,
        delivery: PendingDelivery | None = None,
        websocket: bool = False,
        ack_timeout_s: float = 0.0,
        read_state: bytes | None = None,
        retry_in_s: float | None = None,
        owed_grace_s: float = 0.0,
    ) -> Leased | None:
        """Store the task's new state, append ``event`` to its log and publish it, in one step.

        Only the run holding the task's lease (``run_token``) writes; any other raises :class:`LeaseLost` and
        writes nothing. A ``final`` event ends the task: it is no longer owed. With ``delivery``, the delivery is
        owed too: pushed first when ``websocket`` (waiting ``ack_timeout_s`` for an ack), else by webhook to its
        destination, leased to the caller (the answer) when the destination lets it start at once.

        A write from outside any run (a cancel) passes ``read_state``, the stored record it read, instead of a
        run token: it writes whoever holds the lease, unless the record changed since (:class:`RecordChanged`),
        and its webhook is owed to the destination, never leased to the caller.

        A webhook of a task that still owes another waits behind it (in ``seq`` order); a progress webhook still
        waiting when a newer one is owed is skipped (see ``task_line.lua``).

        With ``retry_in_s`` (a run's failed attempt that is tried again), the run gives its lease back and the task
        waits in the scheduled set that long, owed from ``owed_grace_s`` after that (so that a lost promotion still
        brings it back).

        Durations, not times: the step counts them from Redis's clock, as every step that reads them does.
        """
        task_id = event.task_id
        body = _encode(event)
        dst = destination_for(tenant, delivery.url) if delivery is not None and delivery.url else None
        single = keys.layout().single
        flow = self._flow.header() if dst else ("", "")
        reply = await self._append(
            keys=wire(AppendKeys.of(task_id, event.id, tenant, dst, single=single)),
            args=wire(
                AppendArgs(
                    record=task_state,
                    record_ttl_s=task_ttl_s,
                    event=body,
                    retention_s=self._retention_s,
                    channel=keys.task_channel(task_id),
                    stats_field=stats_field or "",
                    delivery=_encode(delivery) if delivery is not None else "",
                    destination_id=dst.id if dst else "",
                    event_id=event.id,
                    websocket=flag(websocket),
                    ack_timeout_s=ack_timeout_s,
                    has_webhook=flag(dst is not None),
                    task_id=task_id,
                    run_token=run_token,
                    final=flag(final),
                    flow_now=flow[0],
                    flow_settings=flow[1],
                    destination_tenant=dst.tenant if dst else "",
                    destination_origin=dst.origin if dst else "",
                    read_state=read_state or "",
                    retry_in_s=repr(retry_in_s) if retry_in_s is not None else "",
                    owed_grace_s=repr(owed_grace_s),
                    skipped_counter=metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.SKIPPED),
                    at=_rfc3339_now(),  # the time a skipped attempt shows (this host's: only read by people)
                    line_kind="p" if event.type is EventType.PROGRESS else "f",
                    publish="SPUBLISH" if keys.layout().cluster else "PUBLISH",
                )
            ),
        )
        answer = Appended.read(reply)
        if answer.mode in ("ended", "stolen"):
            raise LeaseLost(task_id, ended=answer.mode == "ended")
        if answer.mode == "changed":
            raise RecordChanged(task_id)
        if answer.mode != "webhook":
            return None  # nothing owed; waiting for a socket's ack, in its destination, or behind the task's others
        raw_secrets = answer.secrets
        if not single:
            raw_secrets = await self._batch.command("GET", keys.secrets(tenant))
        return Leased(token=answer.token, raw_secrets=raw_secrets)

    async def events_after(
        self, task_id: str, after_seq: int = 0, *, first: Sequence[Sequence[Any]] = ()
    ) -> list[Event]:
        """Retained events with ``seq > after_seq``, oldest first.

        ``first``: commands to run just before the read, in the same trip (a subscriber's presence, say, which
        must be in Redis before the log is read); their replies are dropped, a failure of one raises.
        """
        key = keys.events(task_id)
        read = ("LRANGE", key, max(0, after_seq - 1), -1)
        if first:
            *_, raw = await self._batch.commands(*first, read)
        else:
            raw = await self._batch.command(*read)
        events = [decode_or_skip(_decode_events, r, key=key) for r in raw]
        await count_unreadable(self._redis, events.count(None))
        return [e for e in events if e is not None and e.seq > after_seq]

    async def events_page(
        self,
        task_id: str,
        after_seq: int = 0,
        *,
        limit: int = MAX_EVENTS_PER_PAGE,
        max_bytes: int = MAX_EVENTS_PAGE_BYTES,
    ) -> tuple[list[Event], int | None]:
        """Up to ``limit`` retained events with ``seq > after_seq``, oldest first, of at most ``max_bytes`` (one
        event at least), and the ``after_seq`` of the next page (None when this one reaches the end of the log)."""
        page_keys = PageKeys.of(task_id)
        key = page_keys.events
        # The event at index i has seq i + 1 (the log is only ever appended to, and expires whole).
        read = EventsPage.read(
            await self._page(
                keys=wire(page_keys), args=wire(PageArgs(start=after_seq, limit=limit, max_bytes=max_bytes))
            )
        )
        events = [decode_or_skip(_decode_events, r, key=key) for r in read.events]
        await count_unreadable(self._redis, events.count(None))
        page = [e for e in events if e is not None and e.seq > after_seq]
        if not read.more:
            return page, None
        # Past what this page read (an unreadable event at its end included): the next page starts there.
        return page, after_seq + len(read.events)

    async def deliveries(self, task_id: str) -> tuple[list[Attempt], list[DeliveryStep]]:
        """The task's delivery attempts and its webhooks' dead-lettered and replayed steps, oldest first, read in
        one trip."""
        attempts_key, steps_key = keys.attempts(task_id), keys.delivery_steps(task_id)
        raw_attempts, raw_steps = await self._batch.commands(
            ("LRANGE", attempts_key, 0, -1), ("LRANGE", steps_key, 0, -1)
        )
        attempts = [decode_or_skip(_decode_attempt, r, key=attempts_key) for r in raw_attempts]
        steps = [decode_or_skip(_decode_step, r, key=steps_key) for r in raw_steps]
        await count_unreadable(self._redis, attempts.count(None) + steps.count(None))
        return [a for a in attempts if a is not None], [s for s in steps if s is not None]
