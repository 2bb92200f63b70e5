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
from delivery.destinations import FlowSettings, destination_for
from delivery.errors import LeaseLost, RecordChanged
from delivery.records import PendingDelivery, count_unreadable, decode_or_skip
from delivery.redis_batch import batched
from delivery.scripts import flag, wire
from delivery.signing_secrets import read_apart
from schemas.deliveries import Attempt, Channel, DeliveryOutcome, DeliveryStep
from schemas.events import Event, EventType
from service.tasks.steps import APPEND, EVENTS_PAGE, AppendArgs, Appended, AppendKeys, EventsPage, PageArgs, PageKeys

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
        self._append = APPEND.batched(redis)
        self._page = EVENTS_PAGE.batched(redis)

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
            raw_secrets = await read_apart(self._batch.command("GET", keys.secrets(tenant)))
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
