"""Task records in Redis, and the writes that move a task through its states.

Submission is one step (claim the Idempotency-Key, store, owe, enqueue). Every state change that produces
an event (progress, completion, failure) is one step that updates the task, appends the event to the log,
publishes it and, for a final event, ends the task and stages its delivery; only the run that holds the
task's lease may take it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from delivery import keys, metrics
from delivery.destinations import FlowSettings, destination_for
from delivery.errors import LeaseLost, RecordChanged, RelayError, UnreadableRecord
from delivery.ids import new_id
from delivery.outbox import Lease
from delivery.records import DECODE_ERRORS, PendingDelivery, owner_of
from delivery.redis_batch import batched
from delivery.replication import ReplicatedStep
from delivery.scripts import flag, wire
from delivery.signing_secrets import live_secrets
from schemas.events import Event, EventType
from schemas.tasks import Progress, Task, TaskError, TaskRecord, TaskStatus, TaskSubmission
from service.dramatiq_redis import InlineMessage
from service.tasks.event_log import EventLog
from service.tasks.ledger import REQUEUE_GRACE_S
from service.tasks.steps import (
    CLAIM_KEY,
    MARK_RUNNING,
    SUBMIT,
    ClaimArgs,
    ClaimKeys,
    ClaimReply,
    RunningArgs,
    RunningKeys,
    SubmitArgs,
    SubmitKeys,
    SubmitReply,
)

log = logging.getLogger("relay.tasks")

# How long an Idempotency-Key keeps answering with the first task.
IDEMPOTENCY_TTL_S = 24 * 3600

# A claimed Idempotency-Key whose task is not stored is another request's for this long (its store step may still
# be on its way); after that, a request with another body takes the key over.
CLAIM_SETTLE_S = 60
# A tenant's open tasks across partitions are read again after this long, and at every submission once they are at
# this fraction of RELAY_TENANT_MAX_OPEN_TASKS; at most this many tenants' figures are kept.
QUOTA_READ_EVERY_S = 1.0
QUOTA_EXACT_FROM = 0.5
MAX_QUOTA_TENANTS = 10_000

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TaskRecord).decode
# A cancel reads the task again this often when its run keeps writing meanwhile.
CANCEL_TRIES = 10
_decode_task = msgspec.json.Decoder(Task).decode


class _Head(msgspec.Struct):
    """Who may see a stored task; the rest of the record is skipped, not built."""

    tenant: str
    ws_token: str | None = None


_decode_head = msgspec.json.Decoder(_Head).decode


def _decode_answer(raw: bytes | str) -> Task | None:
    try:
        return _decode_task(raw)
    except msgspec.DecodeError:  # a key written before answers were kept: treat it as unused
        return None


_ENDS = {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED}
_ALLOWED = {
    TaskStatus.SCHEDULED: {TaskStatus.RUNNING, TaskStatus.SCHEDULED, *_ENDS},  # a retry before it showed running
    TaskStatus.QUEUED: {TaskStatus.RUNNING, TaskStatus.SCHEDULED, *_ENDS},
    TaskStatus.RUNNING: {TaskStatus.RUNNING, TaskStatus.SCHEDULED, *_ENDS},
    TaskStatus.SUCCEEDED: set(),
    TaskStatus.FAILED: set(),
    TaskStatus.CANCELLED: set(),
}


class IllegalTransition(RelayError):
    """A task status change that the lifecycle does not allow (a bug, never a client's mistake)."""

    def __init__(self, task_id: str, old: TaskStatus, new: TaskStatus) -> None:
        super().__init__(f"task {task_id} cannot go from {old.value} to {new.value}")


def move(record: TaskRecord, status: TaskStatus) -> None:
    if status not in _ALLOWED[record.status]:
        raise IllegalTransition(record.id, record.status, status)
    record.status = status


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# Dict keys sorted: the same JSON object written in another key order, or with other spacing, is the same request.
_encode_canonical = msgspec.json.Encoder(order="sorted").encode


def request_fingerprint(submission: TaskSubmission) -> str:
    """What an Idempotency-Key remembers of its request: a hash of the submission as decoded (so spacing and key
    order do not count), to tell a retry of the same request from another request that reuses the key."""
    return hashlib.sha256(_encode_canonical(submission)).hexdigest()


def place(tenant: str, webhook_url: str | None, idempotency_key: str | None) -> keys.Partition:
    """The partition of a new task: its webhook's destination's (so that the step that ends the task owes the
    webhook to its destination atomically), else its Idempotency-Key's (so that a retry finds the first in one
    step), else any (see delivery.keys)."""
    layout = keys.layout()
    if layout.single:
        return layout.partitions[0]
    if webhook_url is not None:
        return keys.of(destination_for(tenant, webhook_url).id)
    if idempotency_key is not None:
        return layout.for_hash(tenant, idempotency_digest(idempotency_key))
    return layout.any()


def _id_mark(partition: keys.Partition) -> str:
    """The two characters that name ``partition`` in the ids Relay makes ('' on a store of one partition, whose ids
    name none)."""
    layout = keys.layout()
    return "" if layout.single else layout.mark("_..", partition)[1:]


def _claimed_record(answer: bytes, task_id: str, record: TaskRecord) -> TaskRecord:
    """The task that a claim was made for, as its first answer gave it (``record`` under ``task_id`` when that answer
    cannot be read): a retry that stores it stores what the key answers with, its ws_token and created_at included."""
    first = _decode_answer(answer)
    if first is None or first.id != task_id:
        return msgspec.structs.replace(record, id=task_id)
    return TaskRecord(**{name: getattr(first, name) for name in Task.__struct_fields__}, tenant=record.tenant)


def _parse_claim(value: bytes) -> tuple[str, str, bytes]:
    """A claim's fingerprint, task id and first answer ('' for what cannot be read)."""
    fingerprint, _, rest = value.partition(b"\n")
    task_id, _, answer = rest.partition(b"\n")
    return fingerprint.decode(errors="replace"), task_id.decode(errors="replace"), answer


class TaskEnded(RelayError):
    """The task has ended already: it cannot be cancelled."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(f"task {record.id} has already ended ({record.status.value})")
        self.record = record


class KeyReused(RelayError):
    """An Idempotency-Key used before for another request (another body) whose task still exists."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used for another request")


class KeyInProgress(RelayError):
    """An Idempotency-Key claimed moments ago by another request (another body) whose task is not stored yet."""

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is in progress")


class NotAdmitted(RelayError):
    """The store takes no new task now (it is full); the Idempotency-Key, if any, was not used before."""


class TenantFull(RelayError):
    """The tenant already has as many open tasks as it may."""

    def __init__(self, open_tasks: int) -> None:
        super().__init__(f"{open_tasks} tasks that have not ended")
        self.open_tasks = open_tasks


class _KeyElsewhere(RelayError):
    """The store step found its Idempotency-Key claimed for a task of another partition, and wrote nothing."""


@dataclass(frozen=True, slots=True)
class Submitted:
    answer: Task
    new: bool  # False: the Idempotency-Key was used before and this is the first answer
    stored_bytes: int = 0  # about what the step added to Redis (0 when it added nothing)


# What a submission stores besides its record, answer and message: index entries, counters, key names.
_SUBMIT_OVERHEAD_BYTES = 512


class TaskStore:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        record_ttl_s: int,
        retention_s: int,
        ack_timeout_s: float = 10.0,
        max_open_per_tenant: int = 0,
        flow: FlowSettings,
    ) -> None:
        self._redis = redis
        self._record_ttl_s = record_ttl_s
        self._ack_timeout_s = ack_timeout_s
        self._max_open = max_open_per_tenant
        self._log = EventLog(redis=redis, retention_s=retention_s, flow=flow)
        self._batch = batched(redis)
        self._submit = SUBMIT.batched(redis)
        self._mark_running = MARK_RUNNING.bind(redis)
        self._claim_key = CLAIM_KEY.bind(redis)
        # On a cluster, a submission is answered once a replica of its master has it (when the master has one).
        self._replicated = ReplicatedStep(redis) if isinstance(redis, RedisCluster) else None
        # Each tenant's open tasks per partition as last read, and when (see _open_elsewhere).
        self._open_counts: dict[str, tuple[list[int], float]] = {}

    async def get(self, task_id: str, *, visible: Callable[[str, str | None], bool] | None = None) -> TaskRecord | None:
        """The task, or None when there is none (or ``visible(tenant, ws_token)`` says the caller may not see it).

        ``visible`` is asked before the whole record is decoded, so that another tenant's large task costs no
        more to refuse than a missing one. Raises :class:`UnreadableRecord` when the record cannot be read.
        """
        raw = await self._batch.command("GET", keys.task(task_id))
        return _decode_visible(task_id, raw, visible) if raw else None

    async def create(
        self,
        record: TaskRecord,
        *,
        idempotency_key: str | None,
        fingerprint: str = "",
        message: InlineMessage | None = None,
        admit: bool = True,
        delay_s: float | None = None,
    ) -> Submitted:
        """Accept a new task: claim the Idempotency-Key, store the task, owe it, enqueue ``message``.

        With an Idempotency-Key this tenant already used (for a task that still exists), nothing is written: for
        the same request (``fingerprint``, from :func:`request_fingerprint`) the first submission's answer comes
        back as it was given; for another one :class:`KeyReused` is raised. With ``admit`` False (the store is
        full) only such a first answer is given: a new task raises :class:`NotAdmitted`, writing nothing. Raises
        :class:`TenantFull` when the tenant has ``max_open_per_tenant`` tasks that have not ended. ``delay_s``: the
        scheduled task (its ``run_at`` set) was asked to run this long after now, counted by Redis's clock.

        One step when the key lives in the task's partition (always on a store of one partition, and for a task
        without a webhook, which :func:`place` puts there). A task placed by its webhook's destination may live
        elsewhere than its key: then the key is claimed first, for the task's id, and the task stored after; a
        retry of the same request finds the claim and stores that same task if the first try did not (the store
        step takes a task only once), so there is still one task per key. A key that the one step finds claimed
        that way (for a task of another partition, by a request with a webhook) is settled the same way.
        """
        if idempotency_key is None:
            return await self._store(
                record, idem=None, fingerprint=fingerprint, message=message, admit=admit, delay_s=delay_s
            )
        digest = idempotency_digest(idempotency_key)
        home = keys.of(record.id)
        claim_part = keys.layout().for_hash(record.tenant, digest)
        claim = ClaimKeys.of(claim_part, record.tenant, digest)
        if claim_part == home:
            try:
                return await self._store(
                    record, idem=claim.claim, fingerprint=fingerprint, message=message, admit=admit, delay_s=delay_s
                )
            except _KeyElsewhere:
                pass  # nothing was written
        return await self._create_claimed(record, claim, fingerprint, message=message, admit=admit, delay_s=delay_s)

    async def _create_claimed(
        self,
        record: TaskRecord,
        claim: ClaimKeys,
        fingerprint: str,
        *,
        message: InlineMessage | None,
        admit: bool,
        delay_s: float | None,
    ) -> Submitted:
        fingerprint = fingerprint or "0"
        value = f"{fingerprint}\n{record.id}\n".encode() + _encode(record.public())
        claim_keys = wire(claim)
        claim_args = ClaimArgs(mode="claim", value=value, ttl_s=IDEMPOTENCY_TTL_S)
        reply = ClaimReply.read(await self._claim_key(keys=claim_keys, args=wire(claim_args)))
        retry = False  # True: storing the task of another try's claim
        if reply.status == "held":
            held = reply.held
            first_fingerprint, first_id, first_answer = _parse_claim(held)
            stored = await self._batch.command("EXISTS", keys.task(first_id)) if first_id else 0
            if stored:
                if first_fingerprint != fingerprint:
                    raise KeyReused
                first = _decode_answer(first_answer)
                if first is not None:
                    return Submitted(answer=first, new=False)
            if first_fingerprint == fingerprint and first_id and keys.of(first_id) == keys.of(record.id):
                # The first try claimed the key and its task is not stored (it failed, or is on its way): store
                # that same task, as the key answers with it; whichever try stores it first, the other's step
                # says so and nothing is doubled.
                record = _claimed_record(first_answer, first_id, record)
                retry = True
            else:
                # Another request's claim whose task is gone: expired, or never stored. Taken over if it is old
                # enough that its own store step can no longer be on its way.
                age_s = IDEMPOTENCY_TTL_S - reply.ttl_s
                if age_s < CLAIM_SETTLE_S:
                    raise KeyInProgress
                replace = ClaimArgs(mode="replace", value=held, ttl_s=IDEMPOTENCY_TTL_S, new_value=value)
                if not await self._claim_key(keys=claim_keys, args=wire(replace)):
                    raise KeyInProgress
        try:
            # The step stores the task only if no try stored it already: a retry of this request, which found this
            # claim, may store it first.
            submitted = await self._store(
                record, idem=None, fingerprint=fingerprint, message=message, admit=admit, retry=True, delay_s=delay_s
            )
        except (TenantFull, NotAdmitted):
            if not retry:
                await self._claim_key(keys=claim_keys, args=wire(ClaimArgs(mode="release", value=value)))
            raise
        return submitted

    async def _store(
        self,
        record: TaskRecord,
        *,
        idem: str | None,
        fingerprint: str,
        message: InlineMessage | None,
        admit: bool,
        retry: bool = False,
        delay_s: float | None = None,
    ) -> Submitted:
        """The store step (see ``submit_task.lua``), in the task's partition. Raises :class:`_KeyElsewhere` (having
        written nothing) when ``idem`` is claimed for a task of another partition."""
        answer = record.public()
        part = keys.of(record.id)
        now = time.time()
        stored, answer_bytes = _encode(record), _encode(answer) if idem else b""
        open_elsewhere = 0
        if self._max_open and not keys.layout().single:
            open_elsewhere = await self._open_elsewhere(record.tenant, part, now)
        step_keys = wire(SubmitKeys.of(part, record.id, record.tenant, idem=idem, message=message))
        step_args = wire(
            SubmitArgs(
                task_id=record.id,
                record=stored,
                record_ttl_s=self._record_ttl_s,
                answer=answer_bytes,
                idempotency_ttl_s=IDEMPOTENCY_TTL_S if idem else "",
                grace_s=REQUEUE_GRACE_S,
                stats_field=metrics.task_counter("submitted"),
                max_open=self._max_open,
                # A delay runs from Redis's clock (the step's own now), not from this host's: a scheduled task runs
                # neither early nor late however far this clock is off. Its record's run_at, shown to the client, is
                # this host's reckoning of the same moment.
                delay_s=repr(delay_s) if delay_s is not None and record.run_at is not None else "",
                task_prefix=part.task_prefix,
                message_id=message.message_id if message else "",
                message=message.body if message else "",
                # To the microsecond: `since` a task's own time finds it.
                created_at_ms=repr(record.created_at.timestamp() * 1000),
                run_at=repr(record.run_at.timestamp()) if record.run_at is not None and delay_s is None else "",
                scheduled_field=metrics.task_counter("scheduled"),
                fingerprint=fingerprint or "0",
                admit=flag(admit),
                may_exist=flag(retry),
                open_elsewhere=open_elsewhere,
                partition_mark=_id_mark(part),
            )
        )
        if self._replicated is not None:
            raw = await self._replicated.run(self._submit.script, step_keys, step_args)
        else:
            raw = await self._submit(keys=step_keys, args=step_args)
        reply = SubmitReply.read(raw)
        outcome = reply.outcome
        if outcome == "elsewhere":
            raise _KeyElsewhere
        if outcome == "full":
            raise TenantFull(int(reply.value))
        if outcome == "conflict":
            raise KeyReused
        if outcome == "refused":
            raise NotAdmitted("the store takes no new task now")
        if outcome == "first":
            first = _decode_answer(reply.value)
            if first is not None:
                return Submitted(answer=first, new=False)
        if outcome == "exists":
            return Submitted(answer=_decode(reply.value).public(), new=False)
        known = self._open_counts.get(record.tenant)
        if known is not None:
            known[0][part.index] += 1  # this process's own submissions count at once; other processes' when read
        size = len(stored) + len(answer_bytes) + (len(message.body) if message else 0) + _SUBMIT_OVERHEAD_BYTES
        return Submitted(answer=answer, new=True, stored_bytes=size)

    async def _open_elsewhere(self, tenant: str, home: keys.Partition, now: float) -> int:
        """The tenant's open tasks in every partition but ``home`` (whose step counts its own).

        Read from every partition (a command each) at most once a second per tenant and API process while the tenant
        is under half its cap (:data:`QUOTA_EXACT_FROM`), counting this process's own submissions meanwhile, and
        before every submission from half on. So the cap holds exactly for one API process (but for submissions in
        flight at the same moment); with several, what the others accept in the second since the last read is not
        seen while the tenant is under half: the cap can be passed only if those rise it from under half to over
        the whole in that second (by at most what they accepted beyond half the cap).
        """
        cached = self._open_counts.get(tenant)
        if cached is not None:
            counts, read_at = cached
            if now - read_at < QUOTA_READ_EVERY_S and sum(counts) < QUOTA_EXACT_FROM * self._max_open:
                return sum(counts) - counts[home.index]
        expired_before = (now - self._record_ttl_s) * 1000
        parts = keys.partitions()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in parts:
                    pipe.zcount(p.open_tasks_of(tenant), f"({expired_before!r}", "+inf")
                counts = [int(c) for c in await pipe.execute()]
        except (RedisError, RedisClusterException, OSError) as exc:
            # A partition away (its master down, a failover under way) must not stop submissions to the others:
            # the figures last read stand in for a while (else none), and the cap holds approximately meanwhile.
            log.warning(
                "counting the open tasks of %s across partitions failed (%s); using the last count", tenant, exc
            )
            counts = list(cached[0]) if cached is not None else [0] * len(parts)
            self._open_counts[tenant] = (counts, now)  # asked again in a second, not at every submission
            return sum(counts) - counts[home.index]
        if len(self._open_counts) >= MAX_QUOTA_TENANTS:
            self._open_counts.clear()
        self._open_counts[tenant] = (counts, now)
        return sum(counts) - counts[home.index]

    async def mark_running(self, record: TaskRecord, run_token: str) -> None:
        """Show the task as running; raises :class:`LeaseLost` when this run no longer holds it."""
        running = msgspec.structs.replace(record, started_at=record.started_at or datetime.now(UTC))
        move(running, TaskStatus.RUNNING)
        written = await self._mark_running(
            keys=wire(RunningKeys.of(record.id)),
            args=wire(
                RunningArgs(
                    task_id=record.id, run_token=run_token, record=_encode(running), record_ttl_s=self._record_ttl_s
                )
            ),
        )
        if not written:
            raise LeaseLost(record.id, ended=False)
        record.status, record.started_at = running.status, running.started_at

    def progress_event(self, record: TaskRecord, percent: float, message: str | None) -> Event:
        """The next progress event of ``record`` (which now shows that progress), to hand to ``append_progress``."""
        record.progress = Progress(percent=percent, message=message)
        return self._next_event(record, EventType.PROGRESS, {"percent": percent, "message": message})

    async def append_progress(self, record: TaskRecord, run_token: str, event: Event) -> Lease | None:
        """Store ``event`` (from ``progress_event``) with the task's state; the same event twice is stored once.

        When the task's webhook wants progress, its webhook is owed too (see ``finish`` for the lease that may
        come back). Raises :class:`LeaseLost` when this run no longer holds the task.
        """
        return await self._write(record, event, run_token=run_token)

    async def finish(
        self,
        record: TaskRecord,
        run_token: str,
        *,
        result: Any = None,
        error: TaskError | None = None,
    ) -> tuple[Event, Lease | None]:
        """Record the final state and its event, ending the task; owe its webhook to its destination.

        Returns the event and the webhook attempt leased to the caller, with the tenant's live signing secrets so
        that the caller can attempt it at once without another round trip (None when there is no webhook, when it
        waits for a WebSocket ack first, or when its destination does not let it start now). Raises
        :class:`LeaseLost` (writing nothing) when the task has ended or another run holds it. The record is changed
        only once the write is done, so a failed write can be retried.
        """
        status = TaskStatus.FAILED if error is not None else TaskStatus.SUCCEEDED
        final = msgspec.structs.replace(record)
        move(final, status)
        final.finished_at = datetime.now(UTC)
        if error is None:
            final.result = result
            event_type, data = EventType.COMPLETED, {"status": status.value, "result": result}
        else:
            final.error = error
            event_type, data = EventType.FAILED, {"status": status.value, "error": msgspec.to_builtins(error)}
        event = self._next_event(final, event_type, data)
        return event, await self._end(final, event, run_token=run_token)

    def retry_event(self, record: TaskRecord, *, error: TaskError, delay_s: float) -> tuple[TaskRecord, Event]:
        """The task as it waits for its next attempt in ``delay_s`` seconds, and its ``task.retrying`` event: to
        hand to ``append_retry`` (built once, so that a write tried again stores the same event)."""
        run_at = datetime.fromtimestamp(time.time() + delay_s, UTC)
        waiting = msgspec.structs.replace(record, attempt=record.attempt + 1, run_at=run_at, progress=None)
        move(waiting, TaskStatus.SCHEDULED)
        data = {"attempt": waiting.attempt, "error": msgspec.to_builtins(error), "run_at": msgspec.to_builtins(run_at)}
        return waiting, self._next_event(waiting, EventType.RETRYING, data)

    async def append_retry(self, waiting: TaskRecord, run_token: str, event: Event) -> Lease | None:
        """Record a failed attempt whose work is tried again (from ``retry_event``) in one step: the task waits
        ``scheduled`` in the scheduled set for its ``run_at``, and this run gives its lease back. When the task's
        webhook wants ``task.retrying``, its webhook is owed too (see ``finish`` for the lease that may come back).

        Raises :class:`LeaseLost` (writing nothing) when the task has ended (a cancel) or another run holds it.
        """
        assert waiting.run_at is not None
        # The wait left, read off this host's clock as run_at was: the step counts it from Redis's, so the retry
        # runs after its delay however far this clock is off (and a write tried again keeps the first schedule).
        retry_in_s = max(0.0, waiting.run_at.timestamp() - time.time())
        return await self._write(
            waiting,
            event,
            run_token=run_token,
            stats_field=metrics.task_counter("retried"),
            retry_in_s=retry_in_s,
            owed_grace_s=REQUEUE_GRACE_S,
        )

    async def cancel(self, task_id: str, *, visible: Callable[[str, str | None], bool]) -> TaskRecord | None:
        """End a queued or running task ``cancelled``, with its final ``task.cancelled`` event delivered like any.

        A queued task's message is dropped when a worker takes it (the task is no longer owed); a running one's
        run finds its task ended at its next write or lease renewal and is cancelled. Returns the cancelled task,
        None when there is no such task for the caller; raises :class:`TaskEnded` when it has ended already.
        """
        for _ in range(CANCEL_TRIES):
            raw = await self._redis.get(keys.task(task_id))
            if not raw:
                return None
            record = _decode_visible(task_id, raw, visible)
            if record is None:
                return None
            if record.status.finished:
                raise TaskEnded(record)
            final = msgspec.structs.replace(record, finished_at=datetime.now(UTC))
            move(final, TaskStatus.CANCELLED)
            event = self._next_event(final, EventType.CANCELLED, {"status": TaskStatus.CANCELLED.value})
            try:
                await self._end(final, event, run_token="", read_state=raw if isinstance(raw, bytes) else raw.encode())
            except (RecordChanged, LeaseLost):
                continue  # its run wrote meanwhile (progress, or its end): read it again
            return final
        raise RecordChanged(task_id)

    async def _end(
        self, final: TaskRecord, event: Event, *, run_token: str, read_state: bytes | None = None
    ) -> Lease | None:
        """Write ``final`` and its final ``event``, ending the task and owing its delivery (see ``finish``)."""
        return await self._write(
            final,
            event,
            run_token=run_token,
            final=True,
            stats_field=metrics.task_counter(final.status.value),
            read_state=read_state,
        )

    async def _write(
        self,
        record: TaskRecord,
        event: Event,
        *,
        run_token: str,
        final: bool = False,
        stats_field: str | None = None,
        read_state: bytes | None = None,
        retry_in_s: float | None = None,
        owed_grace_s: float = 0.0,
    ) -> Lease | None:
        """Write ``record`` and ``event`` in one step, owing the event's delivery when a channel wants it: a final
        event goes to the WebSocket (when asked) and to the webhook when it lists the event's type; any other
        event only to a webhook that lists it (it reaches sockets live either way)."""
        url = record.webhook.url if record.webhook is not None and record.webhook.wants(event.type) else None
        delivery = None
        if url is not None or (final and record.websocket):
            delivery = PendingDelivery(tenant=record.tenant, task_id=record.id, url=url, event=event)
        leased = await self._log.append(
            event,
            tenant=record.tenant,
            run_token=run_token,
            task_state=_encode(record),
            task_ttl_s=self._record_ttl_s,
            final=final,
            stats_field=stats_field,
            delivery=delivery,
            websocket=record.websocket,
            ack_timeout_s=self._ack_timeout_s,
            read_state=read_state,
            retry_in_s=retry_in_s,
            owed_grace_s=owed_grace_s,
        )
        if leased is None or delivery is None:
            return None
        return Lease(delivery=delivery, token=leased.token, secrets=live_secrets(leased.raw_secrets))

    @staticmethod
    def _next_event(record: TaskRecord, event_type: EventType, data: Any) -> Event:
        record.last_seq += 1
        return Event(
            id=new_id("evt", keys.of(record.id)),
            type=event_type,
            task_id=record.id,
            seq=record.last_seq,
            created_at=datetime.now(UTC),
            data=data,
        )


def _decode_visible(
    task_id: str, raw: bytes | str, visible: Callable[[str, str | None], bool] | None
) -> TaskRecord | None:
    """The record, or None when ``visible(tenant, ws_token)`` refuses it: asked before the whole record is decoded,
    so that another tenant's large task costs no more to refuse than a missing one."""
    try:
        if visible is not None:
            head = _decode_head(raw)
            if not visible(head.tenant, head.ws_token):
                return None
        return _decode(raw)
    except DECODE_ERRORS as exc:
        raise UnreadableRecord(keys.task(task_id), tenant=owner_of(raw, last=True), reason=type(exc).__name__) from None
