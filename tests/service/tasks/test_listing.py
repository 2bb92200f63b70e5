"""The task lists' indexes, against a real Redis: written in the submit step, trimmed as records expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from service.tasks.listing import TaskFilter, TaskList
from tests.service.tasks.test_ledger import RECORD_TTL_S, new_record, store


async def test_a_submission_enters_both_indexes_in_its_step(redis: aioredis.Redis) -> None:
    record = new_record("task_a", tenant="acme")
    await store(redis).create(record, idempotency_key=None)

    expected = record.created_at.timestamp() * 1000
    assert await redis.zscore(keys.TASKS, "task_a") == expected
    assert await redis.zscore(keys.tasks_of("acme"), "task_a") == expected
    assert await redis.zscore(keys.tasks_of("globex"), "task_a") is None
    assert 0 < await redis.ttl(keys.tasks_of("acme")) <= RECORD_TTL_S


async def test_entries_whose_records_expired_are_skipped_and_trimmed(redis: aioredis.Redis) -> None:
    tasks, listing = store(redis), TaskList(redis=redis)
    old = new_record("task_old")
    old.created_at = datetime.now(UTC) - timedelta(seconds=RECORD_TTL_S + 60)
    await tasks.create(old, idempotency_key=None)
    await tasks.create(new_record("task_gone"), idempotency_key=None)
    await redis.delete(keys.task("task_gone"))  # expired early

    # An entry older than a record lives is trimmed by the next submission (here, its own); one whose record
    # is gone is skipped.
    assert await redis.zscore(keys.TASKS, "task_old") is None
    assert await redis.zscore(keys.TASKS, "task_gone") is not None
    await tasks.create(new_record("task_new"), idempotency_key=None)
    items, cursor = await listing.page(TaskFilter(), limit=10)
    assert [t.id for t in items] == ["task_new"]
    assert cursor is None


async def test_tasks_created_in_the_same_instant_are_each_listed_once(redis: aioredis.Redis) -> None:
    tasks, listing = store(redis), TaskList(redis=redis)
    moment = datetime.now(UTC)
    for n in range(5):
        record = new_record(f"task_{n}")
        await tasks.create(msgspec.structs.replace(record, created_at=moment), idempotency_key=None)

    seen, cursor = [], None
    while True:
        items, cursor = await listing.page(TaskFilter(tenant="acme"), limit=2, cursor=cursor)
        seen += [t.id for t in items]
        if cursor is None:
            break
    assert sorted(seen) == [f"task_{n}" for n in range(5)]
    assert len(seen) == 5
