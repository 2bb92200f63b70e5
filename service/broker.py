"""The Dramatiq broker: Redis (default) or RabbitMQ, chosen by ``RELAY_BROKER_URL``.

The API does not import the actor: it enqueues a message by name, so it needs no worker code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import dramatiq
import redis.asyncio as aioredis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from delivery.errors import ConfigError
from delivery.scripts import StepArgs, StepKeys, step, wire
from service.amqp import AmqpLink
from service.dramatiq_redis import InlineMessage, RelayRedisBroker, message_for, queue_keys, wake_key
from service.settings import Settings

QUEUE = "relay"
ACTOR = "run_task"
# A worker that has not been heard from for this long is presumed dead; its tasks run again elsewhere.
HEARTBEAT_TIMEOUT_MS = 10_000
# Dramatiq's own limit on an actor, above every kind's limit (Relay enforces the kind's limit itself).
ACTOR_TIME_LIMIT_MS = 2 * 3600 * 1000


class EnqueueKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``enqueue.lua``: the Redis broker's queue, its messages and its wake list."""

    queue: str
    queue_messages: str
    wake: str

    @classmethod
    def of(cls, broker: RedisBroker, queue: str) -> EnqueueKeys:
        queue_key, messages_key = queue_keys(broker, queue)
        return cls(queue=queue_key, queue_messages=messages_key, wake=wake_key(broker, queue))


class EnqueueArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``enqueue.lua``: each message's id and body."""

    repeated = True
    messages: list[str | bytes]


# Answers how many messages it enqueued.
_ENQUEUE = step(__file__, "enqueue.lua", keys=EnqueueKeys, args=EnqueueArgs)


def create_broker(settings: Settings) -> dramatiq.Broker:
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Maintenance (requeueing a dead worker's messages) is driven by the worker's own heartbeat loop
        # (see service.worker.runtime), not left to Dramatiq's 0.1 % chance per fetch.
        broker: dramatiq.Broker = RelayRedisBroker(
            url=url, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS, maintenance_chance=0
        )
    elif url.startswith(("amqp://", "amqps://")):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        raise ConfigError(f"RELAY_BROKER_URL must be redis:// or amqp://, not {url.split(':', 1)[0]}://")
    broker.declare_queue(QUEUE)
    return broker


class Enqueuer:
    """Enqueues ``run_task`` messages through any Dramatiq broker (a blocking client, so from a thread)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def start(self) -> None:
        """Start what keeps the broker's connections alive (in the running event loop); nothing by default."""

    async def close(self) -> None:
        """Close this enqueuer's own connections; the broker's are the broker's to close."""

    async def ping(self) -> None:
        """Check that the broker answers; raises when it does not."""
        await asyncio.to_thread(ping, self._broker)

    def inline(self, task_id: str) -> InlineMessage | None:
        """The message for the submit step to enqueue itself, when the broker lives in the storage Redis."""
        return None

    async def enqueue(self, task_ids: Sequence[str]) -> None:
        def send() -> None:
            for task_id in task_ids:
                self._broker.enqueue(task_message(task_id))

        await asyncio.to_thread(send)


class RabbitmqEnqueuer(Enqueuer):
    """RabbitMQ: every call goes through the process's :class:`~service.amqp.AmqpLink`, whose connections are
    kept alive between submissions and opened again, within the same call, when the broker has closed them."""

    def __init__(self, broker: RabbitmqBroker) -> None:
        super().__init__(broker)
        self._rabbitmq = broker
        self._link = AmqpLink(broker)

    def start(self) -> None:
        self._link.start()

    async def close(self) -> None:
        await self._link.close()

    async def ping(self) -> None:
        await self._link.call(lambda: ping(self._broker))

    async def declare(self) -> None:
        """Declare the queue on one of the link's connections, so that a consumer finds it declared and opens no
        connection of its own for that (one that nothing would then service: RabbitMQ drops it for missed
        heartbeats)."""
        await self._link.call(lambda: self._rabbitmq.declare_queue(QUEUE, ensure=True))

    async def enqueue(self, task_ids: Sequence[str]) -> None:
        def send() -> None:
            for task_id in task_ids:
                self._broker.enqueue(task_message(task_id))

        await self._link.call(send)


class RedisEnqueuer(Enqueuer):
    """The Redis broker in the storage Redis: messages are written as the broker's own enqueue writes them.

    The submit step writes the message in the same Lua step that stores the task, so the API needs neither a
    blocking client nor a thread per submission; the sweeper enqueues with the async client too.
    """

    def __init__(self, broker: RedisBroker, redis: aioredis.Redis) -> None:
        super().__init__(broker)
        self._redis = redis
        self._queue = EnqueueKeys.of(broker, QUEUE)
        self._enqueue = _ENQUEUE.bind(redis)

    def inline(self, task_id: str) -> InlineMessage:
        message_id, body = message_for(QUEUE, ACTOR, task_id)
        return InlineMessage(
            queue_key=self._queue.queue,
            messages_key=self._queue.queue_messages,
            wake_key=self._queue.wake,
            message_id=message_id,
            body=body,
        )

    async def enqueue(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        messages: list[str | bytes] = []
        for task_id in task_ids:
            message_id, body = message_for(QUEUE, ACTOR, task_id)
            messages += [message_id, body]
        await self._enqueue(keys=wire(self._queue), args=wire(EnqueueArgs(messages=messages)))


def enqueuer_for(broker: dramatiq.Broker, redis: aioredis.Redis, settings: Settings) -> Enqueuer:
    if isinstance(broker, RedisBroker) and settings.broker_in_storage:
        return RedisEnqueuer(broker, redis)
    if isinstance(broker, RabbitmqBroker):
        return RabbitmqEnqueuer(broker)
    return Enqueuer(broker)


def task_message(task_id: str) -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=(task_id,), kwargs={}, options={})


def ping(broker: dramatiq.Broker) -> None:
    """Blocking check that the broker answers; raises when it does not."""
    if isinstance(broker, RedisBroker):
        broker.client.ping()
    elif isinstance(broker, RabbitmqBroker):
        broker.get_queue_message_counts(QUEUE)
    else:  # pragma: no cover - only the two brokers above are built
        raise ConfigError(f"unknown broker {type(broker).__name__}")


class BrokerCheck:
    """Pings the broker one call at a time: a check that hangs is not joined by another thread per call."""

    def __init__(self, enqueuer: Enqueuer) -> None:
        self._enqueuer = enqueuer
        self._pending: asyncio.Future[None] | None = None

    async def __call__(self, timeout_s: float) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._enqueuer.ping())
        await asyncio.wait_for(asyncio.shield(self._pending), timeout_s)
