"""The Dramatiq broker: Redis (default) or RabbitMQ, chosen by ``RELAY_BROKER_URL``.

The API does not import the actor: it enqueues a message by name, so it needs no worker code.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import redis.asyncio as aioredis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.redis import _scripts as redis_broker_scripts

from delivery.errors import ConfigError
from service.settings import Settings

QUEUE = "relay"
ACTOR = "run_task"
# A worker that has not been heard from for this long is presumed dead; its tasks run again elsewhere.
HEARTBEAT_TIMEOUT_MS = 10_000
# Dramatiq's own limit on an actor, above every kind's limit (Relay enforces the kind's limit itself).
ACTOR_TIME_LIMIT_MS = 2 * 3600 * 1000
# The dispatch script unpacks arguments in chunks of this size only during maintenance, which enqueue skips.
ENQUEUE_MAX_UNPACK = 1000


def create_broker(settings: Settings) -> dramatiq.Broker:
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Maintenance (requeueing a dead worker's messages) is driven by the worker's own heartbeat loop
        # (see service.worker), not left to Dramatiq's 0.1 % chance per fetch.
        broker: dramatiq.Broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=url, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS, maintenance_chance=0
        )
    elif url.startswith(("amqp://", "amqps://")):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        raise ConfigError(f"RELAY_BROKER_URL must be redis:// or amqp://, not {url.split(':', 1)[0]}://")
    broker.declare_queue(QUEUE)
    return broker


class RedisEnqueuer:
    """Enqueues ``run_task`` messages with the API's async Redis client, in the pipeline that stores the task.

    It runs the Redis broker's own dispatch script, as ``RedisBroker.enqueue`` does, so the API needs neither a
    blocking client nor a thread per submission, and the task and its message cost one round trip.
    """

    def __init__(self, broker: RedisBroker, redis: aioredis.Redis) -> None:
        self._broker = broker
        self._script = redis.register_script(redis_broker_scripts["dispatch"])

    async def stage(self, pipe: Any, task_id: str) -> None:
        redis_message_id = str(uuid.uuid4())
        message = task_message(task_id).copy(options={"redis_message_id": redis_message_id})
        broker = self._broker
        await self._script(
            keys=[broker.namespace],
            args=[
                "enqueue",
                int(time.time() * 1000),
                QUEUE,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                0,
                ENQUEUE_MAX_UNPACK,
                redis_message_id,
                message.encode(),
            ],
            client=pipe,
        )


def task_message(task_id: str) -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=(task_id,), kwargs={}, options={})


def enqueue_task(broker: dramatiq.Broker, task_id: str) -> None:
    """Blocking: call from a thread in async code."""
    broker.enqueue(task_message(task_id))


def ping(broker: dramatiq.Broker) -> None:
    """Blocking check that the broker answers; raises when it does not."""
    if isinstance(broker, RedisBroker):
        broker.client.ping()
    elif isinstance(broker, RabbitmqBroker):
        broker.get_queue_message_counts(QUEUE)
    else:  # pragma: no cover - only the two brokers above are built
        raise ConfigError(f"unknown broker {type(broker).__name__}")
