"""The Lua steps of a task's life, each with the Structs of its keys, arguments and reply.

A step's keys derive from the task's partition and entity (``of``); its arguments are named as its script's header
names them; its reply is read into a class of its own (``read``). The stores that run them (:mod:`.store`,
:mod:`.ledger`, :mod:`.event_log`) bind them to their clients; the scripts sit beside this module.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from delivery import keys
from delivery.destinations import NO_DESTINATION, DestinationRef
from delivery.redis_client import as_text
from delivery.scripts import StepArgs, StepKeys, step
from service.dramatiq_redis import InlineMessage


class Start(enum.Enum):
    """What ``start_task.lua`` found."""

    RUN = "run"  # the lease is this run's
    GONE = "gone"  # no such task (expired, or never stored)
    ENDED = "ended"  # a redelivered message of a task that has ended
    LEASED = "leased"  # a live run holds it (a duplicate message)


class SubmitKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``submit_task.lua``: the task's and its tenant's in its partition, its Idempotency-Key's claim, and
    the broker queue's when the step enqueues its message (the task's own key stands in for those it has not)."""

    task: str
    idempotency: str
    owed_tasks: str
    stats: str
    open_tasks: str  # the tenant's open tasks
    queue: str
    queue_messages: str
    tasks: str
    tenant_tasks: str
    scheduled_tasks: str
    tenant_stats: str
    wake: str
    tenant_scheduled: str

    @classmethod
    def of(
        cls, part: keys.Partition, task_id: str, tenant: str, *, idem: str | None, message: InlineMessage | None
    ) -> SubmitKeys:
        task = keys.task(task_id)
        return cls(
            task=task,
            idempotency=idem or task,
            owed_tasks=part.owed_tasks,
            stats=part.stats,
            open_tasks=part.open_tasks_of(tenant),
            queue=message.queue_key if message else task,
            queue_messages=message.messages_key if message else task,
            tasks=part.tasks,
            tenant_tasks=part.tasks_of(tenant),
            scheduled_tasks=part.scheduled_tasks,
            tenant_stats=part.stats_of(tenant),
            wake=message.wake_key if message else task,
            tenant_scheduled=part.scheduled_of(tenant),
        )


class SubmitArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``submit_task.lua`` (its header says what each means)."""

    task_id: str
    record: bytes
    record_ttl_s: int
    answer: bytes
    idempotency_ttl_s: int | str
    grace_s: float
    stats_field: str
    max_open: int
    delay_s: str
    task_prefix: str
    message_id: str
    message: bytes | str
    created_at_ms: str
    run_at: str
    scheduled_field: str
    fingerprint: str
    admit: str
    may_exist: str
    open_elsewhere: int
    partition_mark: str


@dataclass(frozen=True, slots=True)
class SubmitReply:
    """What ``submit_task.lua`` answered: its outcome, and with 'first' the first answer, with 'exists' the stored
    record, with 'full' the tenant's open tasks."""

    outcome: str
    value: Any = None

    @classmethod
    def read(cls, reply: Sequence[Any]) -> SubmitReply:
        return cls(as_text(reply[0]), reply[1] if len(reply) > 1 else None)


SUBMIT = step(__file__, "submit_task.lua", keys=SubmitKeys, args=SubmitArgs)


class RunningKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``mark_running.lua``: the task's."""

    task: str
    owed_tasks: str
    lease: str

    @classmethod
    def of(cls, task_id: str) -> RunningKeys:
        return cls(task=keys.task(task_id), owed_tasks=keys.of(task_id).owed_tasks, lease=keys.lease(task_id))


class RunningArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``mark_running.lua``."""

    task_id: str
    run_token: str
    record: bytes
    record_ttl_s: int


# Answers 1 when written, 0 when the run no longer holds the task.
MARK_RUNNING = step(__file__, "mark_running.lua", keys=RunningKeys, args=RunningArgs)


class ClaimKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``claim_key.lua``: an Idempotency-Key's claim, in the key's own partition."""

    claim: str

    @classmethod
    def of(cls, part: keys.Partition, tenant: str, digest: str) -> ClaimKeys:
        return cls(claim=part.idempotency(tenant, digest))


class ClaimArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``claim_key.lua``, in its widest form ('replace'); each mode reads what it needs."""

    mode: str  # 'claim', 'release' or 'replace'
    value: bytes
    ttl_s: int | str = ""  # 'claim', 'replace'
    new_value: bytes | str = ""  # 'replace'


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """What ``claim_key.lua`` answered to 'claim': 'claimed', or 'held' with the value held and its TTL left (the
    other modes answer 1 or 0)."""

    status: str
    held: bytes = b""
    ttl_s: int = 0

    @classmethod
    def read(cls, reply: Sequence[Any]) -> ClaimReply:
        status = as_text(reply[0])
        if status != "held":
            return cls(status)
        held = reply[1] if isinstance(reply[1], bytes) else str(reply[1]).encode()
        return cls(status, held, int(reply[2]))


CLAIM_KEY = step(__file__, "claim_key.lua", keys=ClaimKeys, args=ClaimArgs)


class StartKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``start_task.lua``: the task's."""

    task: str
    lease: str
    owed_tasks: str

    @classmethod
    def of(cls, task_id: str) -> StartKeys:
        return cls(task=keys.task(task_id), lease=keys.lease(task_id), owed_tasks=keys.of(task_id).owed_tasks)


class StartArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``start_task.lua``."""

    task_id: str
    run_token: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class StartReply:
    """What ``start_task.lua`` answered: its outcome and, for a run, the task's record as stored."""

    outcome: Start
    record: bytes = b""

    @classmethod
    def read(cls, reply: Sequence[Any]) -> StartReply:
        outcome = Start(as_text(reply[0]))
        return cls(outcome, reply[1]) if outcome is Start.RUN else cls(outcome)


START = step(__file__, "start_task.lua", keys=StartKeys, args=StartArgs)


class RenewKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``renew_leases.lua``: the owed tasks of the runs' partition."""

    owed_tasks: str

    @classmethod
    def of(cls, part: keys.Partition) -> RenewKeys:
        return cls(owed_tasks=part.owed_tasks)


class RenewArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``renew_leases.lua``, then each run's task id and run token."""

    repeated = True
    lease_prefix: str
    lease_ms: int
    runs: list[str]


# Answers the ids of the tasks whose lease is lost.
RENEW = step(__file__, "renew_leases.lua", keys=RenewKeys, args=RenewArgs)


class SweepKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``sweep_tasks.lua``: the partition's owed tasks, their requeue counts and its counters."""

    owed_tasks: str
    requeues: str
    stats: str

    @classmethod
    def of(cls, part: keys.Partition) -> SweepKeys:
        return cls(owed_tasks=part.owed_tasks, requeues=part.requeues, stats=part.stats)


class SweepArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``sweep_tasks.lua`` (its header says what each means)."""

    now: str | float
    limit: int
    first_grace_s: float
    max_grace_s: float
    task_prefix: str
    lease_prefix: str
    requeued_field: str


# Answers the ids of the overdue tasks, to enqueue again.
SWEEP = step(__file__, "sweep_tasks.lua", keys=SweepKeys, args=SweepArgs)


class ReleaseKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``release_runs.lua``: the owed tasks of the runs' partition."""

    owed_tasks: str

    @classmethod
    def of(cls, part: keys.Partition) -> ReleaseKeys:
        return cls(owed_tasks=part.owed_tasks)


class ReleaseArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``release_runs.lua``, then four for each run (its header says which)."""

    repeated = True
    lease_prefix: str
    task_prefix: str
    now: str | float
    runs: list[str | bytes]


# Answers how many runs were given back.
RELEASE = step(__file__, "release_runs.lua", keys=ReleaseKeys, args=ReleaseArgs)


class PromoteKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``promote_scheduled.lua``: the partition's scheduled and owed tasks."""

    scheduled_tasks: str
    owed_tasks: str

    @classmethod
    def of(cls, part: keys.Partition) -> PromoteKeys:
        return cls(scheduled_tasks=part.scheduled_tasks, owed_tasks=part.owed_tasks)


class PromoteArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``promote_scheduled.lua``."""

    now: str | float
    limit: int
    grace_s: float


# Answers the ids of the tasks promoted, to enqueue.
PROMOTE = step(__file__, "promote_scheduled.lua", keys=PromoteKeys, args=PromoteArgs)


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


APPEND = step(__file__, "append_event.lua", flow=True, keys=AppendKeys, args=AppendArgs)


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


EVENTS_PAGE = step(__file__, "events_page.lua", keys=PageKeys, args=PageArgs)
