"""The delivery engine in-process, against a real Redis with the receiver mocked at the HTTP edge: what each answer
leads to (delivered, a retry on the schedule, a dead letter), the signature, and the poller's work."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
import respx
from standardwebhooks.webhooks import Webhook

from delivery import keys
from delivery.dead_letters import DeadLetterStore
from delivery.destinations import DestinationStore, FlowSettings, destination_for
from delivery.engine import DeliveryEngine
from delivery.outbox import Lease, Outbox
from delivery.records import PendingDelivery
from delivery.redis_client import connect
from delivery.signing_secrets import SecretStore
from delivery.webhook import WebhookSender, create_client
from schemas.dead_letters import DeadLetter, DeadLetterReason
from schemas.deliveries import Attempt, DeliveryOutcome
from schemas.events import Event, EventType
from tests.cluster import free_ports
from tests.placed import event_id, home, task_id

SCHEDULE_S = (5.0, 300.0)
FLOW = FlowSettings(lease_s=30.0, retry_span_s=sum(SCHEDULE_S))
URL = "http://127.0.0.1:9/hooks/relay"
USER_AGENT = "relay-test/1"


@pytest.fixture
async def receiver() -> AsyncIterator[respx.MockRouter]:
    """respx in place of the webhook client's transport (our HTTP/1.1 transport is not under test here: see
    test_http11 and test_webhook_sender): the engine and the sender above it see each answer a route gives."""
    with respx.mock(using="httpx", assert_all_called=False) as router:
        yield router


@pytest.fixture
def outbox(redis: aioredis.Redis) -> Outbox:
    return Outbox(redis=redis, flow=FLOW, attempts_ttl_s=3600, dead_letter_retention_s=3600)


@pytest.fixture
async def http(receiver: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    client = create_client(timeout_s=2, allow_private=True)
    yield client
    await client.aclose()


def new_engine(redis: aioredis.Redis, outbox: Outbox, http: httpx.AsyncClient) -> DeliveryEngine:
    """An engine built as a worker builds it (service/worker/runtime.py), polling faster."""
    return DeliveryEngine(
        outbox=outbox,
        sender=WebhookSender(client=http, allow_private=True, user_agent=USER_AGENT),
        secrets=SecretStore(redis=redis),
        schedule_s=SCHEDULE_S,
        poll_interval_s=0.02,
    )


@pytest.fixture
async def engine(redis: aioredis.Redis, outbox: Outbox, http: httpx.AsyncClient) -> AsyncIterator[DeliveryEngine]:
    engine = new_engine(redis, outbox, http)
    yield engine
    await engine.stop(grace_s=1)


def evt(n: int = 1) -> str:
    """The id of the final event of task ``n`` (whose webhook goes to URL)."""
    return event_id(f"evt_{n}", task_id(f"task_{n}", "acme", URL))


def pending(n: int = 1) -> PendingDelivery:
    event = Event(
        id=evt(n),
        type=EventType.COMPLETED,
        task_id=task_id(f"task_{n}", "acme", URL),
        seq=1,
        created_at=datetime.now(UTC),
        data={"status": "succeeded", "result": "é ✓"},
    )
    return PendingDelivery(tenant="acme", task_id=event.task_id, url=URL, event=event)


async def owed(redis: aioredis.Redis, outbox: Outbox, delivery: PendingDelivery) -> Lease:
    """``delivery``'s webhook owed to its destination and leased to this worker, as a run's final write leaves it."""
    await redis.set(keys.delivery(delivery.event_id), msgspec.json.encode(delivery))
    await redis.zadd(home("acme", URL).due, {delivery.event_id: time.time()})
    lease = await outbox.handoff(delivery)
    assert lease is not None
    return lease


async def attempts(redis: aioredis.Redis, task: str | None = None) -> list[Attempt]:
    """The attempts of task ``task`` (task 1's when None)."""
    task = task or task_id("task_1", "acme", URL)
    return [msgspec.json.decode(raw, type=Attempt) for raw in await redis.lrange(keys.attempts(task), 0, -1)]


async def dead_letters(redis: aioredis.Redis) -> list[DeadLetter]:
    ids = await redis.zrange(home("acme", URL).dead_letters, 0, -1)
    return [msgspec.json.decode(await redis.get(keys.dead_letter(i.decode())), type=DeadLetter) for i in ids]


async def retry_due_at(redis: aioredis.Redis, event: str | None = None) -> float | None:
    """When the webhook of ``event`` (task 1's final event when None) is due again at its destination."""
    _, due, _, _ = destination_for("acme", URL).keys
    return await redis.zscore(due, event or evt(1))


async def until(predicate: Callable[[], object], *, timeout_s: float = 5.0) -> None:
    """Wait for ``predicate`` (a plain or an awaitable answer) to hold; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_2xx_records_a_delivered_attempt_and_owes_nothing_more(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(204)

    assert await engine.attempt(await owed(redis, outbox, pending())) is None

    assert route.call_count == 1
    (made,) = await attempts(redis)
    assert (made.outcome, made.status_code, made.attempt, made.error) == (DeliveryOutcome.DELIVERED, 204, 1, None)
    assert not await redis.exists(keys.delivery(evt(1)))
    view = await DestinationStore(redis=redis, flow=FLOW).get(destination_for("acme", URL).id)
    assert view is not None
    assert (view.owed, view.in_flight, view.consecutive_failures) == (0, 0, 0)
    assert view.last_success_at is not None
    assert await dead_letters(redis) == []


async def test_the_webhook_is_the_event_signed_with_the_tenants_secret(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(200)
    delivery = pending()

    await engine.attempt(await owed(redis, outbox, delivery))

    request = route.calls.last.request
    assert request.content == msgspec.json.encode(delivery.event)
    assert request.headers["webhook-id"] == evt(1)
    assert request.headers["user-agent"] == USER_AGENT
    (secret,) = await SecretStore(redis=redis).live("acme")
    assert Webhook(secret).verify(request.content, dict(request.headers)) == json.loads(request.content)


async def test_a_500_is_retried_per_the_schedule_then_dead_lettered(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(500)
    start = time.time()

    assert await engine.attempt(await owed(redis, outbox, pending())) is None

    (made,) = await attempts(redis)
    assert (made.outcome, made.status_code, made.error) == (DeliveryOutcome.FAILED, 500, "HTTP 500")
    first = await retry_due_at(redis)
    assert first is not None
    assert start + 5 * 0.9 <= first <= time.time() + 5 * 1.1  # the first delay, with its jitter
    stored = msgspec.json.decode(await redis.get(keys.delivery(evt(1))), type=PendingDelivery)
    assert (stored.attempts, stored.run_attempts, stored.last_status_code) == (1, 1, 500)
    assert await outbox.claim_destinations(home("acme", URL), limit=10, now=first - 0.1) == []

    (second,) = await outbox.claim_destinations(home("acme", URL), limit=10, now=first + 0.1)
    await engine.attempt(second)
    later = await retry_due_at(redis)
    assert later is not None
    assert time.time() + 300 * 0.9 - 1 <= later <= time.time() + 300 * 1.1

    (third,) = await outbox.claim_destinations(home("acme", URL), limit=10, now=later + 0.1)
    await engine.attempt(third)
    assert route.call_count == 3
    (dead,) = await dead_letters(redis)
    assert (dead.reason, dead.attempts, dead.last_status_code) == (DeadLetterReason.RETRIES_EXHAUSTED, 3, 500)
    assert await retry_due_at(redis) is None
    assert not await redis.exists(keys.delivery(evt(1)))


async def test_410_dead_letters_as_endpoint_gone_without_retry(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(410)

    await engine.attempt(await owed(redis, outbox, pending()))

    assert route.call_count == 1
    (dead,) = await dead_letters(redis)
    assert (dead.reason, dead.attempts, dead.last_status_code) == (DeadLetterReason.ENDPOINT_GONE, 1, 410)
    assert dead.event.id == evt(1)
    assert dead.url == URL
    assert await retry_due_at(redis) is None
    assert not await redis.exists(keys.delivery(evt(1)))
    assert await outbox.claim_destinations(home("acme", URL), limit=10, now=time.time() + 86400) == []


async def test_a_timeout_counts_as_a_failure_and_is_retried(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    receiver.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))

    await engine.attempt(await owed(redis, outbox, pending()))

    (made,) = await attempts(redis)
    assert (made.outcome, made.status_code, made.error) == (DeliveryOutcome.FAILED, None, "timed out")
    due_at = await retry_due_at(redis)
    assert due_at is not None
    assert due_at >= time.time() + 5 * 0.9 - 1
    view = await DestinationStore(redis=redis, flow=FLOW).get(destination_for("acme", URL).id)
    assert view is not None
    assert view.consecutive_failures == 1
    assert view.last_error == "timed out"
    assert await dead_letters(redis) == []


async def test_a_429_waits_its_retry_after(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    receiver.post(URL).respond(429, headers={"Retry-After": "120"})

    await engine.attempt(await owed(redis, outbox, pending()))

    due_at = await retry_due_at(redis)
    assert due_at is not None
    assert time.time() + 119 <= due_at <= time.time() + 120


async def test_the_poller_delivers_a_replayed_dead_letter(
    redis: aioredis.Redis, outbox: Outbox, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(410)
    await engine.attempt(await owed(redis, outbox, pending()))
    (dead,) = await dead_letters(redis)
    route.respond(200)
    store = DeadLetterStore(redis=redis, outbox=outbox)
    assert await store.replay(dead)

    await engine.start()
    await until(lambda: route.call_count == 2)

    await engine.stop(grace_s=2)
    assert await store.get(dead.id) is None
    assert [a.outcome for a in await attempts(redis)] == [DeliveryOutcome.FAILED, DeliveryOutcome.DELIVERED]
    assert await redis.zcard(home("acme", URL).due) == 0


async def test_a_dispatched_webhook_hands_its_slot_to_the_next_one_owed(
    redis: aioredis.Redis, http: httpx.AsyncClient, receiver: respx.MockRouter
) -> None:
    flow = FlowSettings(max_in_flight=1, lease_s=30.0, retry_span_s=sum(SCHEDULE_S))
    outbox = Outbox(redis=redis, flow=flow, attempts_ttl_s=3600, dead_letter_retention_s=3600)
    engine = new_engine(redis, outbox, http)
    route = receiver.post(URL).respond(200)
    first = await owed(redis, outbox, pending(1))
    for n in (2, 3):  # the destination's one slot is taken: these wait
        waiting = pending(n)
        await redis.set(keys.delivery(waiting.event_id), msgspec.json.encode(waiting))
        await redis.zadd(home("acme", URL).due, {waiting.event_id: time.time()})
        assert await outbox.handoff(waiting) is None

    engine.dispatch(first)  # no poller: only the hand-over can send the other two
    await until(lambda: route.call_count == 3)

    await engine.stop(grace_s=2)
    assert [r.request.headers["webhook-id"] for r in route.calls] == [evt(1), evt(2), evt(3)]
    for n in (1, 2, 3):
        assert not await redis.exists(keys.delivery(evt(n)))


async def test_a_push_nobody_acked_in_time_goes_on_by_webhook(
    redis: aioredis.Redis, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    route = receiver.post(URL).respond(200)
    pushed = pending(1)
    await redis.set(keys.delivery(pushed.event_id), msgspec.json.encode(pushed))
    await redis.set(keys.ack_marker(pushed.event_id), "1")
    await redis.zadd(home("acme", URL).due, {pushed.event_id: time.time()})  # its ack timeout is up

    await engine.start()
    await until(lambda: route.call_count == 1)

    await engine.stop(grace_s=2)
    assert [(a.channel.value, a.outcome) for a in await attempts(redis)] == [
        ("websocket", DeliveryOutcome.UNACKED),
        ("webhook", DeliveryOutcome.DELIVERED),
    ]
    assert not await redis.exists(keys.delivery(pushed.event_id))


async def test_a_websocket_only_push_nobody_acked_is_dropped_from_the_schedule(
    redis: aioredis.Redis, engine: DeliveryEngine, receiver: respx.MockRouter
) -> None:
    pushed = msgspec.structs.replace(pending(1), url=None)
    await redis.set(keys.delivery(pushed.event_id), msgspec.json.encode(pushed))
    await redis.set(keys.ack_marker(pushed.event_id), "1")
    await redis.zadd(home("acme", URL).due, {pushed.event_id: time.time()})

    await engine.start()
    await until(lambda: redis.exists(keys.attempts(pushed.task_id)))

    await engine.stop(grace_s=2)
    assert [(a.channel.value, a.outcome) for a in await attempts(redis)] == [("websocket", DeliveryOutcome.UNACKED)]
    assert not await redis.exists(keys.delivery(pushed.event_id))
    assert await redis.zcard(home("acme", URL).due) == 0
    assert len(receiver.calls) == 0


@pytest.fixture
async def secrets_away() -> AsyncIterator[SecretStore]:
    """A secret store whose Redis refuses every command (nothing listens on its port), as a worker's is when the
    master of a tenant's secrets is down while its destination's master answers."""
    (port,) = free_ports(1)
    client = connect(f"redis://127.0.0.1:{port}", retries=0)
    yield SecretStore(redis=client)
    await client.aclose()


def engine_with(secrets: SecretStore, outbox: Outbox, http: httpx.AsyncClient) -> DeliveryEngine:
    return DeliveryEngine(
        outbox=outbox,
        sender=WebhookSender(client=http, allow_private=True, user_agent=USER_AGENT),
        secrets=secrets,
        schedule_s=SCHEDULE_S,
    )


async def test_a_webhook_whose_secrets_are_away_is_signed_with_the_last_read(
    redis: aioredis.Redis,
    outbox: Outbox,
    http: httpx.AsyncClient,
    receiver: respx.MockRouter,
    secrets_away: SecretStore,
) -> None:
    route = receiver.post(URL).respond(204)
    (secret,) = await SecretStore(redis=redis).live("acme")
    engine = engine_with(secrets_away, outbox, http)
    earlier = await owed(redis, outbox, pending(1))
    # Leased with the secrets its step read (a run's final step does), which the engine keeps.
    assert await engine.attempt(Lease(delivery=earlier.delivery, token=earlier.token, secrets=[secret])) is None

    # As a cluster's step leases it when the secrets' master is away: without them.
    lease = await owed(redis, outbox, pending(2))
    assert await engine.attempt(Lease(delivery=lease.delivery, token=lease.token, secrets=None)) is None

    request = route.calls.last.request
    assert request.headers["webhook-id"] == evt(2)
    assert Webhook(secret).verify(request.content, dict(request.headers)) == json.loads(request.content)
    (made,) = await attempts(redis, task_id("task_2", "acme", URL))
    assert made.outcome == DeliveryOutcome.DELIVERED


async def test_a_webhook_with_no_secrets_to_sign_with_waits_for_its_lease_with_one_line(
    redis: aioredis.Redis,
    outbox: Outbox,
    http: httpx.AsyncClient,
    receiver: respx.MockRouter,
    secrets_away: SecretStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = receiver.post(URL).respond(204)
    engine = engine_with(secrets_away, outbox, http)
    lease = await owed(redis, outbox, pending())
    with caplog.at_level(logging.WARNING, logger="relay.delivery"):
        engine.dispatch(Lease(delivery=lease.delivery, token=lease.token, secrets=None))
        await engine.stop(grace_s=5)

    assert route.call_count == 0
    (line,) = [r for r in caplog.records if evt(1) in r.getMessage()]
    assert "waits: the signing secrets of tenant acme cannot be read" in line.getMessage()
    assert (line.levelno, line.exc_info) == (logging.WARNING, None)
    assert await attempts(redis) == []  # nothing recorded: the lease runs out and the webhook is claimed again
