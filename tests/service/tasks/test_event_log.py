"""The step that writes a task's event, against a real Redis: logged, published, the task ended and its delivery
owed, all at once or not at all."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import pytest
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.destinations import FlowSettings, destination_for
from delivery.errors import LeaseLost
from delivery.records import PendingDelivery
from delivery.signing_secrets import SecretStore, live_secrets
from schemas.events import Event, EventType
from schemas.tasks import TaskRecord, TaskStatus, Webhook
from service.tasks.event_log import EventLog, Leased
from service.tasks.ledger import TaskLedger
from service.tasks.steps import Start
from service.tasks.store import TaskStore
from tests.placed import event_id, task_id

FLOW = FlowSettings(max_in_flight=1, lease_s=35.0, retry_span_s=60.0)
TTL_S = 3600
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def log(redis: aioredis.Redis) -> EventLog:
    return EventLog(redis=redis, retention_s=600, flow=FLOW)


async def running(redis: aioredis.Redis, name: str, *, url: str | None = URL, websocket: bool = False) -> TaskRecord:
    """Task ``name`` (placed as Relay places it) accepted and held by the run ``run-a``."""
    record = TaskRecord(
        id=task_id(name, "acme", url),
        kind="echo",
        status=TaskStatus.QUEUED,
        input=None,
        created_at=datetime.now(UTC),
        webhook=Webhook(url=url) if url else None,
        websocket=websocket,
        tenant="acme",
    )
    await TaskStore(redis=redis, record_ttl_s=TTL_S, retention_s=600, flow=FLOW).create(record, idempotency_key=None)
    started = await TaskLedger(redis=redis).start(record.id, "run-a")
    assert started.outcome is Start.RUN
    return record


def final_event(task: str, seq: int = 1) -> Event:
    return Event(
        id=event_id(f"evt_{task}_{seq}", task),
        type=EventType.COMPLETED,
        task_id=task,
        seq=seq,
        created_at=datetime.now(UTC),
        data={"status": "succeeded", "result": 42},
    )


async def finish(
    log: EventLog, record: TaskRecord, event: Event, *, run: str = "run-a", ack_timeout_s: float = 0.0
) -> Leased | None:
    url = record.webhook.url if record.webhook else None
    return await log.append(
        event,
        tenant=record.tenant,
        run_token=run,
        task_state=b'{"final": true}',
        task_ttl_s=TTL_S,
        final=True,
        stats_field=metrics.task_counter("succeeded"),
        delivery=PendingDelivery(tenant=record.tenant, task_id=record.id, url=url, event=event),
        websocket=record.websocket,
        ack_timeout_s=ack_timeout_s,
    )


async def test_a_final_event_is_logged_published_and_its_webhook_leased_in_one_step(
    redis: aioredis.Redis, log: EventLog
) -> None:
    record = await running(redis, "task_1")
    secrets = await SecretStore(redis=redis).live("acme")
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.task_channel(record.id))
    assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
    event = final_event(record.id)

    leased = await finish(log, record, event)

    assert leased is not None
    assert live_secrets(leased.raw_secrets) == secrets  # the lease brings what signs it
    assert await log.events_after(record.id) == [event]
    published = await pubsub.get_message(timeout=2)
    assert published is not None
    assert msgspec.json.decode(published["data"], type=Event) == event
    await pubsub.aclose()
    assert await redis.get(keys.task(record.id)) == b'{"final": true}'
    assert await redis.hget(keys.of(record.id).stats, metrics.task_counter("succeeded")) == b"1"
    # The task has ended: no longer owed, no lease, not open ...
    assert await redis.zscore(keys.of(record.id).owed_tasks, record.id) is None
    assert not await redis.exists(keys.lease(record.id))
    assert await redis.zscore(keys.of(record.id).open_tasks_of("acme"), record.id) is None
    # ... and its webhook is owed to its destination, in flight under the caller's lease.
    stored = msgspec.json.decode(await redis.get(keys.delivery(event.id)), type=PendingDelivery)
    assert stored.event == event
    assert stored.url == URL
    _, due, flight, _ = destination_for("acme", URL).keys
    assert await redis.zscore(flight, event.id) == float(leased.token)
    assert await redis.zcard(due) == 0


async def test_a_run_without_the_lease_writes_nothing(redis: aioredis.Redis, log: EventLog) -> None:
    record = await running(redis, "task_1")
    event = final_event(record.id)

    with pytest.raises(LeaseLost) as lost:
        await finish(log, record, event, run="run-b")

    assert not lost.value.ended
    assert await log.events_after(record.id) == []
    assert not await redis.exists(keys.delivery(event.id))
    assert await redis.zscore(keys.of(record.id).owed_tasks, record.id) is not None  # still owed: the holder ends it
    assert await redis.get(keys.lease(record.id)) == b"run-a"
    assert not await redis.exists(*destination_for("acme", URL).keys)


async def test_a_task_ends_once_and_its_webhook_is_owed_once(redis: aioredis.Redis, log: EventLog) -> None:
    record = await running(redis, "task_1")
    assert await finish(log, record, final_event(record.id, 1)) is not None
    late = final_event(record.id, 2)  # a second final event, from a run that did not see the first end

    with pytest.raises(LeaseLost) as lost:
        await finish(log, record, late)

    assert lost.value.ended
    assert [e.seq for e in await log.events_after(record.id)] == [1]
    assert not await redis.exists(keys.delivery(late.id))
    _, due, flight, _ = destination_for("acme", URL).keys
    assert await redis.zcard(flight) + await redis.zcard(due) == 1


async def test_a_webhook_its_destination_cannot_start_now_is_owed_without_a_lease(
    redis: aioredis.Redis, log: EventLog
) -> None:
    first = await running(redis, "task_1")
    second = await running(redis, "task_2")
    first_event, second_event = final_event(first.id), final_event(second.id)
    assert await finish(log, first, first_event) is not None  # takes the destination's one slot

    assert await finish(log, second, second_event) is None

    _, due, flight, _ = destination_for("acme", URL).keys
    assert [m.decode() for m in await redis.zrange(flight, 0, -1)] == [first_event.id]
    assert [m.decode() for m in await redis.zrange(due, 0, -1)] == [second_event.id]
    assert await redis.exists(keys.delivery(second_event.id))


@pytest.mark.parametrize(
    ("followed", "url", "pushed"),
    [
        (True, URL, True),  # a socket follows: it gets the first chance to ack
        (False, URL, False),  # nobody follows: the webhook at once
        (False, None, True),  # WebSocket only: waits for a socket that may still come to resume
        (True, None, True),
    ],
)
async def test_a_websocket_task_waits_for_an_ack_only_when_a_socket_may_give_one(
    redis: aioredis.Redis, log: EventLog, followed: bool, url: str | None, pushed: bool
) -> None:
    record = await running(redis, "task_1", url=url, websocket=True)
    if followed:
        await redis.sadd(keys.subscribers(record.id), "node-1")
    event = final_event(record.id)

    leased = await finish(log, record, event, ack_timeout_s=1234.5)

    assert await redis.exists(keys.delivery(event.id))
    if pushed:
        assert leased is None
        assert await redis.exists(keys.ack_marker(event.id))
        # waiting that long for an ack, by Redis's clock
        assert await redis.zscore(keys.of(record.id).due, event.id) == pytest.approx(time.time() + 1234.5, abs=5)
        assert not await redis.exists(*destination_for("acme", URL).keys)
    else:
        assert leased is not None
        assert not await redis.exists(keys.ack_marker(event.id))
        assert await redis.zscore(keys.of(record.id).due, event.id) is None


async def _log_of(redis: aioredis.Redis, task_id: str, sizes: list[int]) -> list[Event]:
    events = [
        Event(
            id=f"evt_{n}",
            type=EventType.PROGRESS,
            task_id=task_id,
            seq=n,
            created_at=datetime.now(UTC),
            data={"percent": 1, "message": "m" * size},
        )
        for n, size in enumerate(sizes, start=1)
    ]
    await redis.rpush(keys.events(task_id), *(msgspec.json.encode(e) for e in events))
    return events


async def test_a_page_of_events_holds_at_most_limit_and_says_where_the_next_begins(
    redis: aioredis.Redis, log: EventLog
) -> None:
    events = await _log_of(redis, "task_1", [10] * 25)

    assert await log.events_page("task_1", 0, limit=10) == (events[:10], 10)
    assert await log.events_page("task_1", 10, limit=10) == (events[10:20], 20)
    assert await log.events_page("task_1", 20, limit=10) == (events[20:], None)
    assert await log.events_page("task_1", 20, limit=5) == (events[20:], None)  # exactly the rest: the last page
    assert await log.events_page("task_1", 25) == ([], None)
    assert await log.events_page("task_gone") == ([], None)


async def test_a_page_of_large_events_stops_at_its_byte_bound_and_reads_little_more(
    redis: aioredis.Redis, log: EventLog
) -> None:
    events = await _log_of(redis, "task_1", [20_000] * 3 + [100] * 40 + [20_000] * 30)

    seen: list[Event] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        before = int((await redis.info("stats"))["total_net_output_bytes"])
        page, after = await log.events_page("task_1", after, max_bytes=100_000)
        read = int((await redis.info("stats"))["total_net_output_bytes"]) - before
        assert sum(len(msgspec.json.encode(e)) for e in page) <= 100_000
        assert read < 100_000 + 20_200  # what it answers with, and the one past the bound at most
        assert len(page) >= 3 or after is None  # what the bound allows
        seen += page
        pages += 1
    assert seen == events
    assert pages <= 11


async def test_events_each_more_than_half_the_byte_bound_come_one_a_page_to_the_end(
    redis: aioredis.Redis, log: EventLog
) -> None:
    # The page after seq N starts at seq N + 1: with the event at N read too (and dropped), it filled the bound and
    # the page came back empty, its next_after_seq null, and the reader stopped with events left.
    events = await _log_of(redis, "task_1", [60_000] * 4)

    pages = [await log.events_page("task_1", after, max_bytes=100_000) for after in range(4)]

    assert pages == [([events[0]], 1), ([events[1]], 2), ([events[2]], 3), ([events[3]], None)]
