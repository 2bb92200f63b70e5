"""The task lists' indexes, against a real Redis: written in the submit step, trimmed as records expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import redis.asyncio as aioredis

from delivery import keys
from schemas.tasks import TaskStatus
from service.tasks.listing import HEAD_BYTES, TaskFilter, TaskList, read_head
from tests.service.tasks.test_ledger import RECORD_TTL_S, new_record, store


async def test_a_submission_enters_both_indexes_in_its_step(redis: aioredis.Redis) -> None:
    record = new_record("task_a", tenant="acme")
    await store(redis).create(record, idempotency_key=None)

    expected = record.created_at.timestamp() * 1000
    assert await redis.zscore(keys.of("task_a").tasks, "task_a") == expected
    assert await redis.zscore(keys.of("task_a").tasks_of("acme"), "task_a") == expected
    assert await redis.zscore(keys.of("task_a").tasks_of("globex"), "task_a") is None
    assert 0 < await redis.ttl(keys.of("task_a").tasks_of("acme")) <= RECORD_TTL_S


async def test_entries_whose_records_expired_are_skipped_and_trimmed(redis: aioredis.Redis) -> None:
    tasks, listing = store(redis), TaskList(redis=redis)
    old = new_record("task_old")
    old.created_at = datetime.now(UTC) - timedelta(seconds=RECORD_TTL_S + 60)
    await tasks.create(old, idempotency_key=None)
    await tasks.create(new_record("task_gone"), idempotency_key=None)
    await redis.delete(keys.task("task_gone"))  # expired early

    # An entry older than a record lives is trimmed by the next submission (here, its own); one whose record
    # is gone is skipped.
    assert await redis.zscore(keys.of("task_old").tasks, "task_old") is None
    assert await redis.zscore(keys.of("task_gone").tasks, "task_gone") is not None
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


async def _output_bytes(redis: aioredis.Redis) -> int:
    """What Redis has sent to its clients so far."""
    return int((await redis.info("stats"))["total_net_output_bytes"])


async def _store_large(redis: aioredis.Redis, count: int, *, input_bytes: int, kind: str = "echo") -> list[str]:
    tasks = store(redis)
    ids = []
    for n in range(count):
        record = new_record(f"task_{kind}{n:04d}")
        record.kind, record.input = kind, {"blob": "x" * input_bytes}
        await tasks.create(record, idempotency_key=None)
        ids.append(record.id)
    return ids


async def test_a_filter_that_matches_nothing_reads_the_heads_of_large_tasks_not_their_inputs(
    redis: aioredis.Redis,
) -> None:
    # 300 tasks of 150 KB: 45 MB that the list used to read whole to find that none is of kind `nomatch`.
    await _store_large(redis, 300, input_bytes=150_000)
    listing = TaskList(redis=redis)

    before = await _output_bytes(redis)
    items, cursor = await listing.page(TaskFilter(tenant="acme", kind="nomatch"), limit=500)
    read = await _output_bytes(redis) - before

    assert (items, cursor) == ([], None)
    assert read < 300 * (HEAD_BYTES + 100)  # a head and a length per task, with room for the index


async def test_a_filter_finds_matches_further_down_past_large_tasks_it_leaves_out(redis: aioredis.Redis) -> None:
    wanted = await _store_large(redis, 3, input_bytes=10, kind="sleep")  # the oldest
    await _store_large(redis, 200, input_bytes=150_000)
    listing = TaskList(redis=redis)

    before = await _output_bytes(redis)
    items, cursor = await listing.page(TaskFilter(tenant="acme", kind="sleep"), limit=2)
    assert [t.id for t in items] == wanted[::-1][:2]
    assert cursor is not None
    items, cursor = await listing.page(TaskFilter(tenant="acme", kind="sleep"), limit=2, cursor=cursor)
    assert [t.id for t in items] == wanted[:1]
    assert cursor is None
    assert await _output_bytes(redis) - before < 2 * 203 * (HEAD_BYTES + 100) + 10_000


async def test_a_page_of_large_tasks_stops_at_its_byte_bound_and_its_cursor_goes_on(redis: aioredis.Redis) -> None:
    ids = await _store_large(redis, 30, input_bytes=150_000)
    listing = TaskList(redis=redis, max_page_bytes=1_000_000)  # six of these tasks

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        before = await _output_bytes(redis)
        items, cursor = await listing.page(TaskFilter(tenant="acme"), limit=500, cursor=cursor)
        assert await _output_bytes(redis) - before < 1_000_000 + 100_000
        assert 0 < len(items) <= 6
        seen += [t.id for t in items]
        pages += 1
        if cursor is None:
            break
    assert seen == ids[::-1]  # every task once, newest first
    assert pages == 5


async def test_a_record_that_starts_otherwise_is_read_whole_and_still_filtered(redis: aioredis.Redis) -> None:
    await store(redis).create(new_record("task_a"), idempotency_key=None)
    # A record laid out in another order (written by hand, or by another version): its head cannot be read.
    raw = msgspec.json.decode(await redis.get(keys.task("task_a")))
    reordered = {"input": raw.pop("input"), **raw}
    await redis.set(keys.task("task_a"), msgspec.json.encode(reordered))
    listing = TaskList(redis=redis)

    assert read_head(await redis.getrange(keys.task("task_a"), 0, HEAD_BYTES - 1), "task_a") is None
    assert [t.id for t in (await listing.page(TaskFilter(kind="echo"), limit=10))[0]] == ["task_a"]
    assert (await listing.page(TaskFilter(kind="sleep"), limit=10))[0] == []
    assert [t.id for t in (await listing.page(TaskFilter(status=TaskStatus.QUEUED), limit=10))[0]] == ["task_a"]


async def test_a_record_as_stored_begins_with_the_head_a_filter_reads(redis: aioredis.Redis) -> None:
    """The field order that the listing relies on: a change to Task's fields that moves them fails here."""
    record = new_record("task_a")
    record.status, record.input = TaskStatus.RUNNING, {"n": 1}
    await store(redis).create(record, idempotency_key=None)
    head = read_head(await redis.getrange(keys.task("task_a"), 0, HEAD_BYTES - 1), "task_a")
    assert head is not None
    assert (head.id, head.kind, head.status) == ("task_a", "echo", TaskStatus.RUNNING)
