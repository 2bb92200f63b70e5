"""The record of owed work, against a real Redis: accept, lease, fence, end, sweep."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.destinations import FlowSettings
from delivery.errors import LeaseLost, RecordChanged
from schemas.tasks import TaskRecord, TaskStatus
from service.dramatiq_redis import InlineMessage
from service.tasks.event_log import EventLog
from service.tasks.ledger import MAX_REQUEUE_GRACE_S, REQUEUE_GRACE_S, TaskLedger, new_run_token
from service.tasks.steps import Start
from service.tasks.store import TaskEnded, TaskStore, TenantFull
from tests.placed import task_id

RECORD_TTL_S = 3600
FLOW = FlowSettings(lease_s=35.0, retry_span_s=60.0)
# Why the tests of the submit step's own enqueue need a standalone Redis.
INLINE = "the submit step writes the message itself only for the Redis broker in the storage Redis (a cluster has a broker of its own)"


def new_record(task_id: str = "task_1", tenant: str = "acme") -> TaskRecord:
    return TaskRecord(
        id=task_id,
        kind="echo",
        status=TaskStatus.QUEUED,
        input={"n": 1},
        created_at=datetime.now(UTC),
        ws_token="tok",
        tenant=tenant,
    )


def store(redis: aioredis.Redis, **options: int) -> TaskStore:
    return TaskStore(redis=redis, record_ttl_s=RECORD_TTL_S, retention_s=600, flow=FLOW, **options)


async def accepted_and_started(tasks: TaskStore, ledger: TaskLedger) -> TaskRecord:
    """``task_1`` accepted, and held by the run ``run-a``."""
    await tasks.create(new_record(), idempotency_key=None)
    started = await ledger.start("task_1", "run-a")
    assert started.outcome is Start.RUN
    assert started.record is not None
    return started.record


@pytest.mark.standalone_only(INLINE)
async def test_submit_stores_owes_and_enqueues_in_one_step(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    message = InlineMessage(queue_key="q", messages_key="q.msgs", wake_key="q.wake", message_id="m1", body=b"body")
    before = time.time()
    submitted = await tasks.create(new_record(), idempotency_key="k", message=message)

    assert submitted.new
    assert await redis.exists(keys.task("task_1"))
    owed_until = await redis.zscore(keys.of("task_1").owed_tasks, "task_1")
    assert owed_until is not None
    assert before + REQUEUE_GRACE_S <= owed_until <= time.time() + REQUEUE_GRACE_S
    assert await redis.lrange("q", 0, -1) == [b"m1"]
    assert await redis.hget("q.msgs", "m1") == b"body"
    assert await redis.lrange("q.wake", 0, -1) == [b"1"]  # an idle worker wakes for it
    assert await redis.zcard(keys.of("task_1").open_tasks_of("acme")) == 1


@pytest.mark.standalone_only(INLINE)
async def test_the_wake_list_holds_one_token_however_many_are_enqueued(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    for i in range(5):
        message = InlineMessage(queue_key="q", messages_key="q.msgs", wake_key="q.wake", message_id=f"m{i}", body=b"b")
        await tasks.create(new_record(f"task_{i}"), idempotency_key=None, message=message)

    assert await redis.llen("q") == 5
    assert await redis.lrange("q.wake", 0, -1) == [b"1"]


@pytest.mark.standalone_only(INLINE)
async def test_a_wake_key_gone_wrong_does_not_fail_a_submission(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    await redis.set("q.wake", "not a list")
    message = InlineMessage(queue_key="q", messages_key="q.msgs", wake_key="q.wake", message_id="m1", body=b"b")

    submitted = await tasks.create(new_record(), idempotency_key=None, message=message)

    assert submitted.new
    assert await redis.lrange("q", 0, -1) == [b"m1"]
    assert await redis.get("q.wake") == b"not a list"


async def test_a_used_idempotency_key_answers_the_first_task_and_writes_nothing(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    first, second = (task_id(name, idempotency_key="k") for name in ("task_1", "task_2"))  # placed by their key
    await tasks.create(new_record(first), idempotency_key="k")
    again = await tasks.create(new_record(second), idempotency_key="k")

    assert not again.new
    assert again.answer.id == first
    assert not await redis.exists(keys.task(second))
    assert await redis.zscore(keys.of(second).owed_tasks, second) is None


async def test_a_key_whose_task_expired_is_taken_over(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    first, second = (task_id(name, idempotency_key="k") for name in ("task_1", "task_2"))  # placed by their key
    await tasks.create(new_record(first), idempotency_key="k")
    await redis.delete(keys.task(first))
    again = await tasks.create(new_record(second), idempotency_key="k")
    assert again.new
    assert again.answer.id == second


async def test_a_tenant_over_its_open_tasks_is_refused_until_one_ends(redis: aioredis.Redis) -> None:
    tasks = store(redis, max_open_per_tenant=2)
    ledger = TaskLedger(redis=redis)
    for n in (1, 2):
        await tasks.create(new_record(f"task_{n}"), idempotency_key=None)
    with pytest.raises(TenantFull) as refused:
        await tasks.create(new_record("task_3"), idempotency_key=None)
    assert refused.value.open_tasks == 2
    assert not await redis.exists(keys.task("task_3"))
    # Another tenant is not held back.
    await tasks.create(new_record("task_4", tenant="globex"), idempotency_key=None)

    token = new_run_token()
    started = await ledger.start("task_1", token)
    assert started.record is not None
    await tasks.finish(started.record, token, result=1)
    assert (await tasks.create(new_record("task_3"), idempotency_key=None)).new


async def test_one_run_holds_a_task_and_a_second_message_is_dropped(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    await tasks.create(new_record(), idempotency_key=None)

    first = await ledger.start("task_1", "run-a")
    assert first.outcome is Start.RUN
    assert first.record is not None
    assert first.record.id == "task_1"
    assert (await ledger.start("task_1", "run-b")).outcome is Start.LEASED
    lease_end = await redis.zscore(keys.of("task_1").owed_tasks, "task_1")
    assert lease_end is not None
    assert lease_end > time.time()

    await tasks.finish(first.record, "run-a", result={"ok": True})
    assert (await ledger.start("task_1", "run-c")).outcome is Start.ENDED
    assert await redis.zscore(keys.of("task_1").owed_tasks, "task_1") is None
    assert not await redis.exists(keys.lease("task_1"))
    assert (await ledger.start("task_404", "run-d")).outcome is Start.GONE


async def test_a_run_that_lost_its_lease_writes_nothing(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    stale = await accepted_and_started(tasks, ledger)
    await redis.delete(keys.lease("task_1"))  # run-a's worker stalled past its lease ...
    fresh = await ledger.start("task_1", "run-b")  # ... and the task runs elsewhere
    assert fresh.outcome is Start.RUN
    assert fresh.record is not None

    with pytest.raises(LeaseLost) as lost:
        await tasks.append_progress(stale, "run-a", tasks.progress_event(stale, 50, "stale"))
    assert not lost.value.ended
    with pytest.raises(LeaseLost):
        await tasks.mark_running(stale, "run-a")
    with pytest.raises(LeaseLost):
        await tasks.finish(stale, "run-a", result="stale")
    assert await redis.llen(keys.events("task_1")) == 0
    assert await ledger.renew({"task_1": "run-a"}) == ["task_1"]

    await tasks.finish(fresh.record, "run-b", result="fresh")
    stored = await tasks.get("task_1")
    assert stored is not None
    assert stored.status is TaskStatus.SUCCEEDED
    assert stored.result == "fresh"
    with pytest.raises(LeaseLost) as ended:
        await tasks.finish(stale, "run-a", result="again")
    assert ended.value.ended
    assert await redis.llen(keys.events("task_1")) == 1


async def test_renewal_keeps_a_lease_and_takes_back_one_that_merely_expired(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis, lease_s=5)
    await accepted_and_started(tasks, ledger)
    assert await ledger.renew({"task_1": "run-a"}) == []
    await redis.delete(keys.lease("task_1"))  # Redis stalled past the lease; nobody took the task meanwhile
    assert await ledger.renew({"task_1": "run-a"}) == []
    assert await redis.get(keys.lease("task_1")) == b"run-a"


async def test_sweep_enqueues_overdue_tasks_again_with_a_doubling_grace(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    for n in (1, 2, 3):
        await tasks.create(new_record(f"task_{n}"), idempotency_key=None)
    await ledger.start("task_2", "run-a")  # a live run holds task_2
    await redis.delete(keys.task("task_3"))  # task_3 expired
    now = time.time() + REQUEUE_GRACE_S + 1

    assert await ledger.sweep(keys.of("task_1"), now=now + ledger.lease_s) == ["task_1"]
    assert await redis.zscore(keys.of("task_3").owed_tasks, "task_3") is None  # forgotten
    graces = []
    moment = now + ledger.lease_s
    for _ in range(8):
        due = await redis.zscore(keys.of("task_1").owed_tasks, "task_1")
        assert due is not None
        graces.append(round(due - moment))
        moment = due
        assert await ledger.sweep(keys.of("task_1"), now=moment) == ["task_1"]
    assert graces[:3] == [REQUEUE_GRACE_S, 2 * REQUEUE_GRACE_S, 4 * REQUEUE_GRACE_S]
    assert max(graces) == MAX_REQUEUE_GRACE_S


async def test_a_progress_event_written_twice_is_stored_once(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    record = await accepted_and_started(tasks, ledger)
    event = tasks.progress_event(record, 10, "once")
    await tasks.append_progress(record, "run-a", event)
    await tasks.append_progress(record, "run-a", event)  # its first answer was lost: sent again
    second = tasks.progress_event(record, 20, "twice")
    await tasks.append_progress(record, "run-a", second)
    seqs = [e.seq for e in await EventLog(redis=redis, retention_s=600, flow=FLOW).events_after("task_1")]
    assert seqs == [1, 2]


async def test_a_stopping_worker_gives_back_its_runs_to_be_swept_at_once(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    await accepted_and_started(tasks, ledger)
    await tasks.create(new_record("task_2"), idempotency_key=None)
    assert (await ledger.start("task_2", "run-b")).outcome is Start.RUN
    now = time.time()
    assert await ledger.sweep(keys.of("task_1"), now=now) == []  # both held by live runs

    # run-x never held task_2: only task_1's lease is given back.
    assert await ledger.release({"task_1": "run-a", "task_2": "run-x"}, now=now) == 1

    assert await redis.get(keys.lease("task_1")) is None
    assert await redis.get(keys.lease("task_2")) == b"run-b"
    assert await ledger.sweep(keys.of("task_1"), now=now) == ["task_1"]
    assert (await ledger.start("task_1", "run-c")).outcome is Start.RUN  # the next worker runs it


async def test_a_run_given_back_shows_its_task_queued_without_its_progress_as_the_next_attempt(
    redis: aioredis.Redis,
) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    running = await accepted_and_started(tasks, ledger)
    await tasks.mark_running(running, "run-a")
    await tasks.append_progress(running, "run-a", tasks.progress_event(running, 40, "half way"))
    ttl = await redis.ttl(keys.task("task_1"))

    assert await ledger.release({"task_1": "run-a"}) == 1

    waiting = await tasks.get("task_1")
    assert waiting is not None
    assert (waiting.status, waiting.progress, waiting.attempt, waiting.lost_runs) == (TaskStatus.QUEUED, None, 2, 1)
    assert waiting.died_runs == 0  # a clean stop (a deploy) does not count towards the bound on reruns
    assert waiting.last_seq == running.last_seq  # the next event goes on from the last one stored
    assert 0 < ttl - 1 <= await redis.ttl(keys.task("task_1")) <= ttl
    started = await ledger.start("task_1", "run-b")
    assert started.record is not None
    assert started.record.attempt == 2


async def test_a_cancel_ends_a_running_task_and_its_run_can_write_nothing_after(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    running = await accepted_and_started(tasks, ledger)
    await tasks.append_progress(running, "run-a", tasks.progress_event(running, 10, "started"))

    cancelled = await tasks.cancel("task_1", visible=lambda tenant, _: tenant == "acme")

    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert await redis.zscore(keys.of("task_1").owed_tasks, "task_1") is None  # its message, if any, is dropped
    assert await redis.get(keys.lease("task_1")) is None
    with pytest.raises(LeaseLost) as ended:
        await tasks.append_progress(running, "run-a", tasks.progress_event(running, 20, "late"))
    assert ended.value.ended
    with pytest.raises(LeaseLost):
        await tasks.finish(running, "run-a", result="too late")
    assert await ledger.renew({"task_1": "run-a"}) == ["task_1"]  # the run is told at its next renewal
    stored = await tasks.get("task_1")
    assert stored is not None
    assert (stored.status, stored.result, stored.last_seq) == (TaskStatus.CANCELLED, None, 2)
    with pytest.raises(TaskEnded):
        await tasks.cancel("task_1", visible=lambda tenant, _: True)
    assert await tasks.cancel("task_1", visible=lambda tenant, _: tenant == "globex") is None


async def test_a_cancel_from_a_stale_read_writes_nothing(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    record = new_record()
    await tasks.create(record, idempotency_key=None)
    log = EventLog(redis=redis, retention_s=600, flow=FLOW)
    final = tasks.progress_event(record, 1, "x")  # any event: the write must be refused before it counts
    with pytest.raises(RecordChanged):
        await log.append(
            final, tenant="acme", run_token="", task_state=b"{}", task_ttl_s=60, final=True, read_state=b"stale"
        )
    assert await redis.llen(keys.events("task_1")) == 0
    assert await redis.zscore(keys.of("task_1").owed_tasks, "task_1") is not None


async def test_a_scheduled_task_is_enqueued_once_its_time_has_come_and_never_before(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    now = time.time()
    record = new_record()
    record.status = TaskStatus.SCHEDULED
    record.run_at = datetime.fromtimestamp(now + 60, UTC)
    await tasks.create(record, idempotency_key=None)
    assert await ledger.promote(keys.of("task_1"), now=now + 59.9) == []
    assert (
        await ledger.sweep(keys.of("task_1"), now=now + 59.9) == []
    )  # not overdue either: owed from a grace after its time
    assert await ledger.promote(keys.of("task_1"), now=now + 60.001) == ["task_1"]
    assert await ledger.promote(keys.of("task_1"), now=now + 61) == []  # once
    assert await redis.zscore(keys.of("task_1").scheduled_tasks, "task_1") is None
    assert (await ledger.start("task_1", "run-a")).outcome is Start.RUN


async def test_a_cancelled_scheduled_task_is_never_enqueued(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    ledger = TaskLedger(redis=redis)
    now = time.time()
    record = new_record()
    record.status = TaskStatus.SCHEDULED
    record.run_at = datetime.fromtimestamp(now + 5, UTC)
    await tasks.create(record, idempotency_key=None)

    cancelled = await tasks.cancel("task_1", visible=lambda tenant, _: True)

    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert await ledger.promote(keys.of("task_1"), now=now + 10) == []
    assert await ledger.sweep(keys.of("task_1"), now=now + 3600) == []
    assert (await ledger.start("task_1", "run-a")).outcome is Start.ENDED
