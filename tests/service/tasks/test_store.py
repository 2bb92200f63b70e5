"""The task store's and the ledger's steps under concurrency, against a real Redis: one task per Idempotency-Key,
no more open tasks than the cap, one live run per task, and a sweep that takes only what is overdue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from unittest.mock import ANY

import pytest
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.destinations import FlowSettings
from delivery.errors import LeaseLost
from delivery.ids import new_id
from delivery.redis_client import connect
from schemas.events import EventType
from schemas.tasks import TaskError, TaskRecord, TaskStatus, Webhook
from service.tasks.ledger import REQUEUE_GRACE_S, TaskLedger
from service.tasks.steps import Start
from service.tasks.store import (
    CLAIM_SETTLE_S,
    IDEMPOTENCY_TTL_S,
    KeyInProgress,
    KeyReused,
    Submitted,
    TaskStore,
    TenantFull,
    idempotency_digest,
)
from tests.placed import task_id, url_in

RECORD_TTL_S = 3600
FLOW = FlowSettings(lease_s=35.0, retry_span_s=60.0)


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    """Four connections, as four API nodes or workers would hold."""
    opened = [connect(redis_url) for _ in range(4)]
    yield opened
    for client in opened:
        await client.aclose()


@pytest.fixture
def redis(clients: list[aioredis.Redis]) -> aioredis.Redis:
    return clients[0]


def new_record(task_id: str, tenant: str = "acme") -> TaskRecord:
    return TaskRecord(
        id=task_id,
        kind="echo",
        status=TaskStatus.QUEUED,
        input={"n": 1},
        created_at=datetime.now(UTC),
        tenant=tenant,
    )


def stores(clients: list[aioredis.Redis], **options: int) -> list[TaskStore]:
    return [TaskStore(redis=c, record_ttl_s=RECORD_TTL_S, retention_s=600, flow=FLOW, **options) for c in clients]


@pytest.mark.parametrize("webhook", [False, True])
async def test_concurrent_submits_with_one_idempotency_key_store_one_task(
    clients: list[aioredis.Redis], webhook: bool
) -> None:
    # Placed with the key (one step), or by a webhook's destination in another partition than the key (the key
    # claimed first; on one partition, one step all the same).
    key_home = keys.layout().for_hash("acme", idempotency_digest("order-7"))
    url = url_in(keys.partitions()[(key_home.index + 1) % len(keys.partitions())], "acme", "http://receiver{}.test/")
    records = [
        new_record(task_id(f"task_{n}", "acme", url if webhook else None, idempotency_key="order-7")) for n in range(12)
    ]
    for record in records:
        record.webhook = Webhook(url=url) if webhook else None
    nodes = stores(clients)
    submits = [nodes[n % 4].create(record, idempotency_key="order-7") for n, record in enumerate(records)]

    results: list[Submitted] = await asyncio.gather(*submits)

    assert sum(r.new for r in results) == 1
    (first,) = [r.answer.id for r in results if r.new]
    assert {r.answer.id for r in results} == {first}
    redis = clients[0]
    stored = [record.id for record in records if await redis.exists(keys.task(record.id))]
    assert stored == [first]
    assert await redis.zcard(keys.of(first).owed_tasks) == 1
    assert await redis.zcard(keys.of(first).open_tasks_of("acme")) == 1


async def test_an_idempotency_key_is_the_tenants_own(redis: aioredis.Redis, clients: list[aioredis.Redis]) -> None:
    tasks = stores(clients)[0]
    assert (await tasks.create(new_record(task_id("task_1", idempotency_key="k")), idempotency_key="k")).new
    theirs = task_id("task_2", "globex", idempotency_key="k")
    other = await tasks.create(new_record(theirs, tenant="globex"), idempotency_key="k")
    assert other.new
    assert other.answer.id == theirs


async def test_concurrent_submits_never_pass_the_open_task_cap(clients: list[aioredis.Redis]) -> None:
    nodes = stores(clients, max_open_per_tenant=3)
    submits = [nodes[n % 4].create(new_record(f"task_{n}"), idempotency_key=None) for n in range(10)]

    results = await asyncio.gather(*submits, return_exceptions=True)

    accepted = [r for r in results if isinstance(r, Submitted)]
    refused = [r for r in results if isinstance(r, TenantFull)]
    assert (len(accepted), len(refused)) == (3, 7)
    assert {r.open_tasks for r in refused} == {3}
    redis = clients[0]
    assert await redis.zcard(keys.of("task_0").open_tasks_of("acme")) == 3  # one partition: the cap is one step's
    assert await redis.zcard(keys.of("task_0").owed_tasks) == 3


async def test_open_tasks_older_than_a_record_lives_do_not_count(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients, max_open_per_tenant=1)[0]
    # A task accepted longer ago than its record lives expired without ending: it holds no place.
    await redis.zadd(keys.of("task_1").open_tasks_of("acme"), {"task_old": (time.time() - RECORD_TTL_S - 5) * 1000})

    assert (await tasks.create(new_record("task_1"), idempotency_key=None)).new
    with pytest.raises(TenantFull):
        await tasks.create(new_record("task_2"), idempotency_key=None)
    assert await redis.zscore(keys.of("task_1").open_tasks_of("acme"), "task_old") is None


async def test_concurrent_starts_give_the_task_to_one_run(clients: list[aioredis.Redis]) -> None:
    await stores(clients)[0].create(new_record("task_1"), idempotency_key=None)
    ledgers = [TaskLedger(redis=c) for c in clients]

    started = await asyncio.gather(*(ledgers[n % 4].start("task_1", f"run-{n}") for n in range(8)))

    outcomes = [s.outcome for s in started]
    assert outcomes.count(Start.RUN) == 1
    assert outcomes.count(Start.LEASED) == 7
    winner = outcomes.index(Start.RUN)
    assert await clients[0].get(keys.lease("task_1")) == f"run-{winner}".encode()


async def test_a_late_mark_running_cannot_reopen_a_finished_task(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients)[0]
    ledger = TaskLedger(redis=redis)
    await tasks.create(new_record("task_1"), idempotency_key=None)
    started = await ledger.start("task_1", "run-a")
    assert started.record is not None
    record = started.record

    await tasks.mark_running(record, "run-a")
    shown = await tasks.get("task_1")
    assert shown is not None
    assert shown.status is TaskStatus.RUNNING
    assert shown.started_at is not None

    await tasks.finish(record, "run-a", result=1)
    with pytest.raises(LeaseLost):
        await tasks.mark_running(record, "run-a")  # a write retried after its first answer was lost
    stored = await tasks.get("task_1")
    assert stored is not None
    assert stored.status is TaskStatus.SUCCEEDED
    assert await ledger.renew({"task_1": "run-a"}) == ["task_1"]  # the run learns it has nothing to hold


async def test_sweep_takes_a_dead_runs_task_after_its_lease_and_not_before(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients)[0]
    ledger = TaskLedger(redis=redis, lease_s=5)
    await tasks.create(new_record("task_1"), idempotency_key=None)
    await ledger.start("task_1", "run-a")
    lease_end = await redis.zscore(keys.of("task_1").owed_tasks, "task_1")
    assert lease_end is not None
    await redis.delete(keys.lease("task_1"))  # its worker died: nobody renews the lease
    await tasks.create(new_record("task_2"), idempotency_key=None)  # queued, within its grace

    assert await ledger.sweep(keys.of("task_1"), now=lease_end - 0.5) == []
    assert await ledger.sweep(keys.of("task_1"), now=lease_end + 0.5) == ["task_1"]
    assert await ledger.sweep(keys.of("task_2"), now=lease_end + 1) == []  # its next deadline moved on in the same step
    assert await ledger.sweep(keys.of("task_1"), now=time.time() + REQUEUE_GRACE_S + 0.5) == ["task_2"]


async def test_a_retry_gives_the_lease_back_and_the_task_waits_scheduled_until_its_time(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients)[0]
    ledger = TaskLedger(redis=redis)
    await tasks.create(new_record("task_1"), idempotency_key=None)
    started = await ledger.start("task_1", "run-a")
    assert started.record is not None
    error = TaskError(type="Retry", message="busy")

    waiting, event = tasks.retry_event(started.record, error=error, delay_s=30)
    await tasks.append_retry(waiting, "run-a", event)
    await tasks.append_retry(waiting, "run-a", event)  # a write tried again after its answer was lost

    stored = await tasks.get("task_1")
    assert stored is not None
    assert (stored.status, stored.attempt, stored.progress) == (TaskStatus.SCHEDULED, 2, None)
    assert stored.run_at == waiting.run_at
    logged = await redis.lrange(keys.events("task_1"), 0, -1)
    assert len(logged) == 1  # stored once
    assert event.type is EventType.RETRYING
    assert event.data == {"attempt": 2, "error": {"type": "Retry", "message": "busy"}, "run_at": ANY}
    assert not await redis.exists(keys.lease("task_1"))
    run_at = waiting.run_at.timestamp() if waiting.run_at else 0.0
    assert await redis.zscore(keys.of("task_1").scheduled_tasks, "task_1") == pytest.approx(run_at)
    assert await redis.zscore(keys.of("task_1").owed_tasks, "task_1") == pytest.approx(run_at + REQUEUE_GRACE_S)
    assert await ledger.promote(keys.of("task_1"), now=run_at - 1) == []  # never early
    assert await ledger.sweep(keys.of("task_1"), now=run_at + 1) == []  # owed only from a grace after its time
    assert await ledger.promote(keys.of("task_1"), now=run_at + 0.01) == ["task_1"]
    second = await ledger.start("task_1", "run-b")
    assert second.outcome is Start.RUN
    assert second.record is not None
    assert second.record.attempt == 2


async def test_a_run_that_lost_its_task_cannot_schedule_a_retry(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients)[0]
    ledger = TaskLedger(redis=redis)
    await tasks.create(new_record("task_1"), idempotency_key=None)
    started = await ledger.start("task_1", "run-a")
    assert started.record is not None
    cancelled = await tasks.cancel("task_1", visible=lambda tenant, token: True)
    assert cancelled is not None

    waiting, event = tasks.retry_event(started.record, error=TaskError(type="Retry", message="x"), delay_s=1)
    with pytest.raises(LeaseLost):
        await tasks.append_retry(waiting, "run-a", event)
    stored = await tasks.get("task_1")
    assert stored is not None
    assert stored.status is TaskStatus.CANCELLED
    assert await redis.zscore(keys.of("task_1").scheduled_tasks, "task_1") is None


async def test_a_key_used_for_a_task_placed_by_its_webhook_refuses_another_body_placed_by_the_key(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    """A task with a webhook lives in its destination's partition, and its Idempotency-Key may live in another: a
    later request with that key and another body, without a webhook (so placed with its key), still finds the first
    task there, and is refused; the first request, tried again, still gets its task."""
    tasks = stores(clients)[0]
    key_home = keys.layout().for_hash("acme", idempotency_digest("k"))
    elsewhere = keys.partitions()[(key_home.index + 1) % len(keys.partitions())]
    url = url_in(elsewhere, "acme", "http://receiver{}.test/hook")
    with_webhook = new_record(task_id("task_1", "acme", url))
    with_webhook.webhook = Webhook(url=url)
    first = await tasks.create(with_webhook, idempotency_key="k", fingerprint="aa")
    assert first.new

    without = new_record(task_id("task_2", idempotency_key="k"))
    with pytest.raises(KeyReused):
        await tasks.create(without, idempotency_key="k", fingerprint="bb")

    assert not await redis.exists(keys.task(without.id))
    retried = new_record(task_id("task_3", "acme", url))
    retried.webhook = Webhook(url=url)
    again = await tasks.create(retried, idempotency_key="k", fingerprint="aa")
    assert (again.new, again.answer.id) == (False, with_webhook.id)


async def test_a_key_whose_task_placed_by_its_webhook_expired_is_taken_over_by_a_request_placed_by_the_key(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    tasks = stores(clients)[0]
    key_home = keys.layout().for_hash("acme", idempotency_digest("k"))
    elsewhere = keys.partitions()[(key_home.index + 1) % len(keys.partitions())]
    url = url_in(elsewhere, "acme", "http://receiver{}.test/hook")
    with_webhook = new_record(task_id("task_1", "acme", url))
    with_webhook.webhook = Webhook(url=url)
    await tasks.create(with_webhook, idempotency_key="k", fingerprint="aa")
    await redis.delete(keys.task(with_webhook.id))  # expired
    claim = key_home.idempotency("acme", idempotency_digest("k"))
    await redis.expire(claim, IDEMPOTENCY_TTL_S - CLAIM_SETTLE_S - 1)  # claimed long enough ago

    without = new_record(task_id("task_2", idempotency_key="k"))
    taken = await tasks.create(without, idempotency_key="k", fingerprint="bb")

    assert (taken.new, taken.answer.id) == (True, without.id)
    assert await redis.exists(keys.task(without.id))
    again = await tasks.create(
        new_record(task_id("task_3", idempotency_key="k")), idempotency_key="k", fingerprint="bb"
    )
    assert (again.new, again.answer.id) == (False, without.id)


async def test_a_retry_that_stores_the_task_of_a_claim_first_leaves_the_first_try_nothing_to_double(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    """A task placed by its webhook's destination, elsewhere than its key: the first try claims the key, and its
    retry comes while the first try's store step is still on its way. One of the two stores the task, as the key
    answers with it; the other's step finds it stored."""
    if keys.layout().single:
        pytest.skip("on one partition a key and its task are written in one step")
    first_node, retry_node = stores(clients)[:2]
    key_home = keys.layout().for_hash("acme", idempotency_digest("k"))
    url = url_in(
        keys.partitions()[(key_home.index + 1) % len(keys.partitions())], "acme", "http://receiver{}.test/hook"
    )

    def submission(name: str) -> TaskRecord:
        record = new_record(task_id(name, "acme", url))
        record.webhook, record.ws_token = Webhook(url=url), f"token-of-{name}"
        return record

    claimed, go_on = asyncio.Event(), asyncio.Event()
    claim_key = first_node._claim_key

    async def slow_after_its_claim(*, keys: list[str], args: list[object]) -> object:
        reply = await claim_key(keys=keys, args=args)
        if args[0] == "claim":
            claimed.set()
            await go_on.wait()
        return reply

    first_node._claim_key = slow_after_its_claim  # type: ignore[method-assign]
    first = submission("task_1")
    first_try = asyncio.create_task(first_node.create(first, idempotency_key="k", fingerprint="aa"))
    await claimed.wait()
    retried = await retry_node.create(submission("task_2"), idempotency_key="k", fingerprint="aa")
    go_on.set()
    answered = await first_try

    assert [answered.new, retried.new].count(True) == 1
    assert answered.answer == retried.answer == first.public()  # the first try's task, its ws_token too
    stored = await first_node.get(first.id)
    assert stored is not None
    assert stored.ws_token == first.ws_token
    assert await redis.hget(keys.of(first.id).stats, metrics.task_counter("submitted")) == b"1"


def placed_by_webhook_away_from_key(name: str, key: str) -> TaskRecord:
    """A task whose webhook's destination places it in another partition than its Idempotency-Key ``key``."""
    key_home = keys.layout().for_hash("acme", idempotency_digest(key))
    url = url_in(
        keys.partitions()[(key_home.index + 1) % len(keys.partitions())], "acme", "http://receiver{}.test/hook"
    )
    record = new_record(task_id(name, "acme", url))
    record.webhook = Webhook(url=url)
    return record


async def test_a_claim_whose_task_is_gone_is_taken_over_by_another_request_only_once_settled(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    """A request placed by its webhook claims its key before it stores its task: another request's claim whose task
    is not stored is left alone while that request may still store it, and taken over (the new request's task, for
    the whole time a key lives) after."""
    if keys.layout().single:
        pytest.skip("on one partition a key and its task are written in one step")
    tasks = stores(clients)[0]
    first = placed_by_webhook_away_from_key("task_1", "k")
    assert (await tasks.create(first, idempotency_key="k", fingerprint="aa")).new
    await redis.delete(keys.task(first.id))  # expired, or never stored
    claim = keys.layout().for_hash("acme", idempotency_digest("k")).idempotency("acme", idempotency_digest("k"))

    second = placed_by_webhook_away_from_key("task_2", "k")
    with pytest.raises(KeyInProgress):
        await tasks.create(second, idempotency_key="k", fingerprint="bb")
    await redis.expire(claim, IDEMPOTENCY_TTL_S - CLAIM_SETTLE_S - 1)  # claimed long enough ago
    taken = await tasks.create(second, idempotency_key="k", fingerprint="bb")

    assert (taken.new, taken.answer.id) == (True, second.id)
    held = await redis.get(claim)
    assert held is not None
    assert held.startswith(f"bb\n{second.id}\n".encode())
    assert IDEMPOTENCY_TTL_S - 60 < await redis.ttl(claim) <= IDEMPOTENCY_TTL_S
    again = await tasks.create(placed_by_webhook_away_from_key("task_3", "k"), idempotency_key="k", fingerprint="bb")
    assert (again.new, again.answer.id) == (False, second.id)


async def test_a_claim_whose_task_is_refused_is_given_back(
    redis: aioredis.Redis, clients: list[aioredis.Redis]
) -> None:
    """A request placed by its webhook that claimed its key and whose task is then refused (its tenant is full) gives
    the key back: another request with that key is not kept waiting for a task that will never be stored."""
    if keys.layout().single:
        pytest.skip("on one partition a key and its task are written in one step")
    tasks = stores(clients, max_open_per_tenant=1)[0]
    assert (await tasks.create(new_record(task_id("task_0")), idempotency_key=None)).new
    claim = keys.layout().for_hash("acme", idempotency_digest("k")).idempotency("acme", idempotency_digest("k"))

    with pytest.raises(TenantFull):
        await tasks.create(placed_by_webhook_away_from_key("task_1", "k"), idempotency_key="k", fingerprint="aa")

    assert not await redis.exists(claim)
    roomy = stores(clients)[0]
    other = placed_by_webhook_away_from_key("task_2", "k")
    assert (await roomy.create(other, idempotency_key="k", fingerprint="bb")).answer.id == other.id


@pytest.fixture
def eight_partitions() -> Iterator[keys.Layout]:
    old = keys.use(keys.Layout.of(8))
    yield keys.layout()
    keys.use(old)


def spread_record() -> TaskRecord:
    """A task without webhook or key, placed as the API places one: any partition."""
    return new_record(new_id("task", keys.layout().any()))


async def accepted_of(nodes: list[TaskStore], count: int) -> int:
    """How many of ``count`` submissions, made by ``nodes`` in turn, were accepted."""
    accepted = 0
    for n in range(count):
        try:
            await nodes[n % len(nodes)].create(spread_record(), idempotency_key=None)
            accepted += 1
        except TenantFull:
            pass
    return accepted


async def test_across_partitions_one_process_keeps_the_cap_exactly(
    clients: list[aioredis.Redis], eight_partitions: keys.Layout
) -> None:
    assert await accepted_of(stores(clients[:1], max_open_per_tenant=20), 60) == 20
    spread = [await clients[0].zcard(p.open_tasks_of("acme")) for p in keys.partitions()]
    assert sum(spread) == 20
    assert len([n for n in spread if n]) > 1  # the tasks did spread over partitions


async def test_across_partitions_several_processes_pass_the_cap_by_at_most_what_the_bound_says(
    clients: list[aioredis.Redis], eight_partitions: keys.Layout
) -> None:
    cap = 20
    nodes = stores(clients, max_open_per_tenant=cap)
    accepted = await accepted_of(nodes, 120)  # four API processes in turn, well within one second
    # Each process sees the others' submissions from half the cap on (and at its first read): at most
    # (processes - 1) x half the cap beyond the cap.
    print(f"cap {cap}, four processes: accepted {accepted}")
    assert cap <= accepted <= cap + 3 * (cap // 2)
    # Once a second has passed every process reads again, and none accepts past the cap any more.
    await asyncio.sleep(1.1)
    assert await accepted_of(nodes, 20) == 0
