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
from delivery.destinations import NO_DESTINATION, FlowSettings, destination_for
from delivery.errors import LeaseLost, RecordChanged
from delivery.records import PendingDelivery, count_unreadable, decode_or_skip
from delivery.redis_batch import batched
from delivery.redis_client import as_text
from delivery.scripts import step
from schemas.deliveries import Attempt, Channel, DeliveryOutcome, DeliveryStep
from schemas.events import Event, EventType

# Events one page of GET /v1/tasks/{id}/events holds at most (and by default).
MAX_EVENTS_PER_PAGE = 1000
# Bytes of events one page reads at most (always one event at least); past it the page ends early.
MAX_EVENTS_PAGE_BYTES = 4 * 1024 * 1024

_APPEND = step(__file__, "append_event.lua", flow=True)
_EVENTS_PAGE = step(__file__, "events_page.lua")

_encode = msgspec.json.Encoder().encode
_decode_events = msgspec.json.Decoder(Event).decode
_decode_attempt = msgspec.json.Decoder(Attempt).decode
_decode_step = msgspec.json.Decoder(DeliveryStep).decode


def _rfc3339_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


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
        ack_due_at: float = 0.0,
        read_state: bytes | None = None,
        retry_at: float | None = None,
        owed_from: float = 0.0,
    ) -> Leased | None:
        """Store the task's new state, append ``event`` to its log and publish it, in one step.

        Only the run holding the task's lease (``run_token``) writes; any other raises :class:`LeaseLost` and
        writes nothing. A ``final`` event ends the task: it is no longer owed. With ``delivery``, the delivery is
        owed too: pushed first when ``websocket`` (waiting for an ack until ``ack_due_at``), else by webhook to its
        destination, leased to the caller (the answer) when the destination lets it start at once.

        A write from outside any run (a cancel) passes ``read_state``, the stored record it read, instead of a
        run token: it writes whoever holds the lease, unless the record changed since (:class:`RecordChanged`),
        and its webhook is owed to the destination, never leased to the caller.

        A webhook of a task that still owes another waits behind it (in ``seq`` order); a progress webhook still
        waiting when a newer one is owed is skipped (see ``task_line.lua``).

        With ``retry_at`` (a run's failed attempt that is tried again), the run gives its lease back and the task
        waits in the scheduled set until then, owed from ``owed_from`` on (so that a lost promotion still brings
        it back).
        """
        task_id = event.task_id
        body = _encode(event)
        dst = destination_for(tenant, delivery.url) if delivery is not None and delivery.url else None
        part = keys.of(task_id)
        single = keys.layout().single
        reply = await self._append(
            keys=[
                keys.task(task_id),
                keys.events(task_id),
                part.stats,
                keys.delivery(event.id),
                part.due,
                # On one partition the step reads the secrets it hands back; else they live in the tenant's own
                # slot, and the caller reads them (see ``Leased``).
                keys.secrets(tenant) if single else part.nothing,
                keys.subscribers(task_id),
                keys.ack_marker(event.id),
                part.owed_tasks,
                keys.lease(task_id),
                part.open_tasks_of(tenant),
                part.requeues,
                *(dst.keys if dst else part.destination_keys(NO_DESTINATION)),
                part.scheduled_tasks,
                keys.webhook_head(task_id),
                keys.webhook_line(task_id),
                keys.attempts(task_id),
                part.stats_of(tenant),
                part.scheduled_of(tenant),
            ],
            args=[
                task_state,
                task_ttl_s,
                body,
                self._retention_s,
                keys.task_channel(task_id),
                stats_field or "",
                _encode(delivery) if delivery is not None else "",
                dst.id if dst else "",
                event.id,
                "1" if websocket else "",
                ack_due_at,
                "1" if delivery is not None and delivery.url else "",
                task_id,
                run_token,
                "1" if final else "",
                *(self._flow.header() if dst else ["", ""]),
                dst.tenant if dst else "",
                dst.origin if dst else "",
                read_state or "",
                repr(retry_at) if retry_at is not None else "",
                repr(owed_from),
                metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.SKIPPED),
                _rfc3339_now(),
                "p" if event.type is EventType.PROGRESS else "f",
                "SPUBLISH" if keys.layout().cluster else "PUBLISH",
            ],
        )
        mode = as_text(reply[0])
        if mode in ("ended", "stolen"):
            raise LeaseLost(task_id, ended=mode == "ended")
        if mode == "changed":
            raise RecordChanged(task_id)
        if mode != "webhook":
            return None  # nothing owed; waiting for a socket's ack, in its destination, or behind the task's others
        raw_secrets = reply[1] if isinstance(reply[1], bytes) else None
        if not single:
            raw_secrets = await self._batch.command("GET", keys.secrets(tenant))
        return Leased(token=as_text(reply[2]), raw_secrets=raw_secrets)

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
        key = keys.events(task_id)
        # The event at index i has seq i + 1 (the log is only ever appended to, and expires whole).
        more, raw = await self._page(keys=[key], args=[after_seq, limit, max_bytes])
        events = [decode_or_skip(_decode_events, r, key=key) for r in raw]
        await count_unreadable(self._redis, events.count(None))
        page = [e for e in events if e is not None and e.seq > after_seq]
        if not more:
            return page, None
        # Past what this page read (an unreadable event at its end included): the next page starts there.
        return page, after_seq + len(raw)

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
