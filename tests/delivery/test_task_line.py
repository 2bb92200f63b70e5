"""A task's webhooks one at a time and in seq order, against a real Redis: the next is owed only when the one
before it is settled; a progress webhook still waiting is skipped when a newer one is owed; no other is skipped."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.destinations import FlowSettings, destination_for
from delivery.outbox import Lease, Outbox, webhook_attempt
from delivery.policy import Decision, Verdict
from delivery.records import PendingDelivery
from delivery.signing_secrets import live_secrets
from schemas.deliveries import Attempt, DeliveryOutcome
from schemas.events import Event, EventType
from schemas.tasks import TaskRecord, TaskStatus, Webhook
from service.tasks.event_log import EventLog
from service.tasks.ledger import TaskLedger
from service.tasks.steps import Start
from service.tasks.store import TaskStore
from tests.placed import event_id, home, task_id

FLOW = FlowSettings(max_in_flight=4, lease_s=35.0, retry_span_s=600.0)
TTL_S = 3600
URL = "http://127.0.0.1:9/hook"
ALL_TYPES = list(EventType)


@pytest.fixture
def log(redis: aioredis.Redis) -> EventLog:
    return EventLog(redis=redis, retention_s=600, flow=FLOW)


@pytest.fixture
def outbox(redis: aioredis.Redis) -> Outbox:
    return Outbox(redis=redis, flow=FLOW, attempts_ttl_s=TTL_S, dead_letter_retention_s=TTL_S)


def task_1() -> str:
    """The id of the task these tests run (placed by its webhook's destination, as Relay places it)."""
    return task_id("task_1", "acme", URL)


def evt(n: int) -> str:
    """The id of task 1's ``n``-th event."""
    return event_id(f"evt_{n}", task_1())


async def running(redis: aioredis.Redis, *, websocket: bool = False) -> TaskRecord:
    record = TaskRecord(
        id=task_1(),
        kind="echo",
        status=TaskStatus.QUEUED,
        input=None,
        created_at=datetime.now(UTC),
        webhook=Webhook(url=URL, events=ALL_TYPES),
        websocket=websocket,
        tenant="acme",
    )
    await TaskStore(redis=redis, record_ttl_s=TTL_S, retention_s=600, flow=FLOW).create(record, idempotency_key=None)
    assert (await TaskLedger(redis=redis).start(record.id, "run-a")).outcome is Start.RUN
    return record


class Task:
    """Writes a task's events as its run would, each wanted by its webhook."""

    def __init__(self, log: EventLog, record: TaskRecord) -> None:
        self.log = log
        self.record = record
        self.seq = 0

    async def emit(self, event_type: EventType, *, ack_timeout_s: float = 0.0) -> tuple[Event, Lease | None]:
        self.seq += 1
        event = Event(
            id=evt(self.seq),
            type=event_type,
            task_id=self.record.id,
            seq=self.seq,
            created_at=datetime.now(UTC),
            data={"n": self.seq},
        )
        delivery = PendingDelivery(tenant="acme", task_id=self.record.id, url=URL, event=event)
        leased = await self.log.append(
            event,
            tenant="acme",
            run_token="run-a",
            task_state=msgspec.json.encode(self.record),
            task_ttl_s=TTL_S,
            final=event_type.final,
            delivery=delivery,
            websocket=self.record.websocket,
            ack_timeout_s=ack_timeout_s,
        )
        if leased is None:
            return event, None
        return event, Lease(delivery=delivery, token=leased.token, secrets=live_secrets(leased.raw_secrets))


async def settle(outbox: Outbox, lease: Lease, status: int = 200) -> Lease | None:
    attempt = webhook_attempt(
        lease.delivery, at=datetime.now(UTC), status_code=status, error=None, duration_ms=1.0, delivered=status < 300
    )
    verdict = Decision(Verdict.DELIVERED) if status < 300 else Decision(Verdict.RETRY, delay_s=5)
    return (await outbox.record(lease.delivery, attempt, verdict, token=lease.token)).next


async def owed(redis: aioredis.Redis) -> list[str]:
    """The task's webhooks owed to the destination now (waiting or in flight)."""
    _, due, flight, _ = destination_for("acme", URL).keys
    return sorted(m.decode() for m in [*await redis.zrange(due, 0, -1), *await redis.zrange(flight, 0, -1)])


async def attempts(redis: aioredis.Redis) -> list[tuple[str, DeliveryOutcome]]:
    raw = await redis.lrange(keys.attempts(task_1()), 0, -1)
    return [(a.event_id, a.outcome) for a in (msgspec.json.decode(r, type=Attempt) for r in raw)]


async def test_a_tasks_webhooks_are_owed_one_at_a_time_and_a_waiting_progress_is_superseded(
    redis: aioredis.Redis, log: EventLog, outbox: Outbox
) -> None:
    task = Task(log, await running(redis))
    _, first = await task.emit(EventType.PROGRESS)
    assert first is not None  # owed and leased at once: in flight
    await task.emit(EventType.PROGRESS)  # waits behind it
    retrying, lined = await task.emit(EventType.RETRYING)
    assert lined is None
    final, _ = await task.emit(EventType.COMPLETED)
    assert await owed(redis) == [evt(1)]  # only the head, in flight

    following = await settle(outbox, first)
    assert following is not None
    assert following.delivery.event_id == retrying.id  # the next in seq order, leased to the same worker
    assert await settle(outbox, following, 500) is None  # a failed retrying webhook is tried again, not skipped
    assert await owed(redis) == [evt(3)]  # the final still waits behind it

    _, due, _, _ = destination_for("acme", URL).keys
    await redis.zadd(due, {retrying.id: 0})  # its retry is due now
    await redis.zadd(home("acme", URL).destinations_ready, {destination_for("acme", URL).id: 0})
    (again,) = await outbox.claim_destinations(home("acme", URL), limit=10)
    last = await settle(outbox, again)
    assert last is not None
    assert last.delivery.event_id == final.id
    assert await settle(outbox, last) is None

    assert await attempts(redis) == [
        (evt(2), DeliveryOutcome.SKIPPED),  # superseded by the retrying event while it waited
        (evt(1), DeliveryOutcome.DELIVERED),
        (evt(3), DeliveryOutcome.FAILED),
        (evt(3), DeliveryOutcome.DELIVERED),
        (evt(4), DeliveryOutcome.DELIVERED),
    ]
    assert not await redis.exists(keys.webhook_head(task_1()), keys.webhook_line(task_1()))


async def test_a_progress_webhook_not_yet_sent_is_skipped_for_a_newer_one_and_a_final_is_never_skipped(
    redis: aioredis.Redis, log: EventLog, outbox: Outbox
) -> None:
    await redis.hset(destination_for("acme", URL).keys[0], "paused", "1")  # nothing starts: all wait
    task = Task(log, await running(redis))
    for _ in range(3):
        await task.emit(EventType.PROGRESS)
    assert await owed(redis) == [evt(3)]  # each newer one superseded the waiting head
    await task.emit(EventType.COMPLETED)
    assert await owed(redis) == [evt(4)]
    assert await attempts(redis) == [(evt(n), DeliveryOutcome.SKIPPED) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        assert not await redis.exists(keys.delivery(evt(n)))
    assert await redis.exists(keys.delivery(evt(4)))


async def test_a_failed_progress_webhook_with_a_newer_one_waiting_is_skipped_not_retried(
    redis: aioredis.Redis, log: EventLog, outbox: Outbox
) -> None:
    task = Task(log, await running(redis))
    _, head = await task.emit(EventType.PROGRESS)
    assert head is not None
    final, _ = await task.emit(EventType.FAILED)

    following = await settle(outbox, head, 503)

    assert following is not None
    assert following.delivery.event_id == final.id
    assert await attempts(redis) == [(evt(1), DeliveryOutcome.FAILED), (evt(1), DeliveryOutcome.SKIPPED)]
    raw = await redis.lrange(keys.attempts(task_1()), 0, -1)
    assert [msgspec.json.decode(r, type=Attempt).attempt for r in raw] == [1, 2]


async def test_an_ack_of_the_head_lets_the_next_webhook_be_owed(
    redis: aioredis.Redis, log: EventLog, outbox: Outbox
) -> None:
    task = Task(log, await running(redis, websocket=True))
    await redis.sadd(keys.subscribers(task_1()), "node-1")  # a socket follows: pushed first
    retrying, _ = await task.emit(EventType.RETRYING, ack_timeout_s=1e9)
    final, _ = await task.emit(EventType.COMPLETED, ack_timeout_s=0.0)
    assert await redis.zscore(home("acme", URL).due, retrying.id) == pytest.approx(time.time() + 1e9, abs=60)
    assert await redis.zscore(home("acme", URL).due, final.id) is None  # behind the retrying event

    settled = await outbox.ack(
        tenant="acme", event_id=retrying.id, task_id=task_1(), created_at=0.0, has_webhook=True, duration_ms=1.0
    )

    assert settled
    assert await redis.get(keys.webhook_head(task_1())) == f"f:{final.id}".encode()
    due_at = await redis.zscore(home("acme", URL).due, final.id)
    assert due_at is not None
    assert due_at > 2.0  # its own ack time has passed: owed now, through the general schedule


async def test_each_new_head_gives_the_line_its_whole_time_again(
    redis: aioredis.Redis, log: EventLog, outbox: Outbox
) -> None:
    task = Task(log, await running(redis))
    _, head = await task.emit(EventType.RETRYING)
    assert head is not None
    for _ in range(2):
        await task.emit(EventType.RETRYING)
    await redis.expire(keys.webhook_line(task_1()), 5)  # the first head took most of the line's time

    await settle(outbox, head)

    assert await redis.ttl(keys.webhook_line(task_1())) > TTL_S - 5
    assert await redis.ttl(keys.webhook_head(task_1())) > TTL_S - 5
