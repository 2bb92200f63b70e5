"""The record of owed work: every accepted task that has not ended, and the leases of the runs that hold them.

Dramatiq's queue is the fast path, never the only copy. A task enters ``relay:tasks:owed`` in the step that
accepts it (scored a grace after its enqueue) and leaves it in the step that ends it. A worker about to run a
task takes its lease (a token with a TTL, renewed while the run lasts; the task's score follows the lease).
A sweeper in every worker enqueues again whatever is overdue: a message that Redis lost in a crash, a retry
the broker never stored, a fetch stranded in a live worker's ack set, a run whose worker died. A message for a
task that has ended, or that a live run holds, is dropped, so a task may run again after a fault but ends once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.records import count_unreadable, decode_or_skip, get_many
from delivery.redis_client import as_text
from delivery.scripts import wire
from schemas.tasks import TaskRecord, TaskStatus
from service.tasks.steps import (
    PROMOTE,
    RELEASE,
    RENEW,
    START,
    SWEEP,
    PromoteArgs,
    PromoteKeys,
    ReleaseArgs,
    ReleaseKeys,
    RenewArgs,
    RenewKeys,
    Start,
    StartArgs,
    StartKeys,
    StartReply,
    SweepArgs,
    SweepKeys,
)

# A run's lease: renewed every third of it; a worker silent for this long is taken for dead.
LEASE_S = 15.0
# How long a queued task may wait to start, and the sweeper's first grace before an overdue task is enqueued
# again; the grace doubles with each requeue of one task, up to the most.
REQUEUE_GRACE_S = 15.0
MAX_REQUEUE_GRACE_S = 600.0
# Most overdue tasks one sweep takes.
SWEEP_BATCH = 500

_decode = msgspec.json.Decoder(TaskRecord).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Started:
    outcome: Start
    record: TaskRecord | None = None


def new_run_token() -> str:
    return uuid.uuid4().hex


def given_back(record: TaskRecord, *, died: bool = False) -> TaskRecord:
    """The task as it waits for a rerun after its run was lost (given back at a stop, or ``died`` with its worker):
    queued, without the lost run's progress, its ``attempt`` raised (the rerun is another try of the work, which does
    not spend the kind's retries). Only deaths count towards the bound on reruns: a deploy stops workers cleanly."""
    return msgspec.structs.replace(
        record,
        status=TaskStatus.QUEUED,
        progress=None,
        attempt=record.attempt + 1,
        lost_runs=record.lost_runs + 1,
        died_runs=record.died_runs + died,
    )


class TaskLedger:
    def __init__(self, *, redis: aioredis.Redis, lease_s: float = LEASE_S) -> None:
        self._redis = redis
        self.lease_s = lease_s
        self._start = START.batched(redis)
        self._renew = RENEW.bind(redis)
        self._sweep = SWEEP.bind(redis)
        self._release = RELEASE.bind(redis)
        self._promote = PROMOTE.bind(redis)

    async def start(self, task_id: str, run_token: str) -> Started:
        """Take ``task_id``'s lease for the run ``run_token``, unless it has ended or a live run holds it."""
        reply = StartReply.read(
            await self._start(
                keys=wire(StartKeys.of(task_id)),
                args=wire(StartArgs(task_id=task_id, run_token=run_token, lease_ms=int(self.lease_s * 1000))),
            )
        )
        outcome = reply.outcome
        if outcome is not Start.RUN:
            return Started(outcome)
        record = decode_or_skip(_decode, reply.record, key=keys.task(task_id))
        if record is None:
            # It can never run: stop owing it rather than enqueue it again and again.
            await self._redis.zrem(keys.of(task_id).owed_tasks, task_id)
            await count_unreadable(self._redis, 1)
            return Started(Start.GONE)
        return Started(outcome, record)

    async def renew(self, runs: Mapping[str, str]) -> list[str]:
        """Renew the leases of ``runs`` (task id -> run token); return the tasks whose lease is lost."""
        lost: list[str] = []
        for part, group in _by_partition(runs).items():
            runs_of_part: list[str] = []
            for task_id, token in group.items():
                runs_of_part += [task_id, token]
            args = RenewArgs(lease_prefix=part.lease_prefix, lease_ms=int(self.lease_s * 1000), runs=runs_of_part)
            lost += [as_text(t) for t in await self._renew(keys=wire(RenewKeys.of(part)), args=wire(args))]
        return lost

    async def release(self, runs: Mapping[str, str], *, now: float | None = None) -> int:
        """Give back the leases of ``runs`` (task id -> run token) that a stopping worker abandons: each task is
        owed at once, so that the next sweep enqueues it again, and shows ``queued`` (its progress cleared, its
        ``attempt`` raised: see :func:`given_back`) until it runs again. Returns how many were given back."""
        released = 0
        for part, group in _by_partition(runs).items():
            ids = list(group)
            raws = await get_many(self._redis, [keys.task(task_id) for task_id in ids])
            released_runs: list[str | bytes] = []
            for task_id, raw in zip(ids, raws, strict=True):
                record = decode_or_skip(_decode, raw, key=keys.task(task_id)) if raw else None
                if raw is None or record is None or record.status.finished:
                    released_runs += [task_id, group[task_id], "", ""]
                else:  # written only if the record is still as read (a cancel may end it meanwhile)
                    released_runs += [task_id, group[task_id], raw, _encode(given_back(record))]
            args = ReleaseArgs(
                lease_prefix=part.lease_prefix, task_prefix=part.task_prefix, now=_moment(now), runs=released_runs
            )
            released += int(await self._release(keys=wire(ReleaseKeys.of(part)), args=wire(args)))
        return released

    async def promote(
        self, partition: keys.Partition, *, now: float | None = None, limit: int = SWEEP_BATCH
    ) -> list[str]:
        """The scheduled tasks of ``partition`` whose ``run_at`` has come, owed from now on: the caller enqueues
        them."""
        due = await self._promote(
            keys=wire(PromoteKeys.of(partition)),
            args=wire(PromoteArgs(now=_moment(now), limit=limit, grace_s=REQUEUE_GRACE_S)),
        )
        return [as_text(t) for t in due]

    async def sweep(
        self, partition: keys.Partition, *, now: float | None = None, limit: int = SWEEP_BATCH
    ) -> list[str]:
        """The owed tasks of ``partition`` that are overdue; each one's next deadline is pushed on (doubling) in the
        same step."""
        due = await self._sweep(
            keys=wire(SweepKeys.of(partition)),
            args=wire(
                SweepArgs(
                    now=_moment(now),
                    limit=limit,
                    first_grace_s=REQUEUE_GRACE_S,
                    max_grace_s=MAX_REQUEUE_GRACE_S,
                    task_prefix=partition.task_prefix,
                    lease_prefix=partition.lease_prefix,
                    requeued_field=metrics.REQUEUED,
                )
            ),
        )
        return [as_text(t) for t in due]


def _moment(now: float | None) -> str | float:
    """A step's ``now`` argument: '' lets the step read Redis's clock (the default: one clock decides within a
    partition, whatever the workers' clocks say); a time is a caller's stand-in for it."""
    return "" if now is None else now


def _by_partition(runs: Mapping[str, str]) -> dict[keys.Partition, dict[str, str]]:
    groups: dict[keys.Partition, dict[str, str]] = {}
    for task_id, token in runs.items():
        groups.setdefault(keys.of(task_id), {})[task_id] = token
    return groups
