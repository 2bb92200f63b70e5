"""What Relay relies on inside Dramatiq's Redis broker, in one place.

Two things Dramatiq keeps private are used here, and a test (``tests/service/test_dramatiq_redis.py``) fails
when a Dramatiq release changes either:

- the broker's ``dispatch`` Lua script and its argument list, which the worker calls to keep its heartbeat
  fresh and to requeue a dead worker's messages (Dramatiq does both only when a consumer fetches, and the
  maintenance only on a random 0.1 % of fetches);
- the layout of an enqueued message (a hash of bodies by Redis message id and a list of ids per queue), which
  the submit step writes itself in the same Lua step that stores the task.
"""

from __future__ import annotations

import time
import uuid

import dramatiq
import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.redis import _scripts as redis_broker_scripts

# The dispatch script unpacks in chunks of this size during maintenance (Dramatiq uses half Lua's stack).
MAX_UNPACK = 1000


def dispatch_args(
    broker: RedisBroker, command: str, queue: str, *, timestamp_ms: int, maintenance: bool
) -> list[str | int]:
    """The dispatch script's ARGV for ``command`` on ``queue``, in the order Dramatiq's ``_dispatch`` builds it."""
    return [
        command,
        timestamp_ms,
        queue,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        int(maintenance),
        MAX_UNPACK,
    ]


class BrokerMaintenance:
    """Heartbeats a worker process's broker id and requeues the messages of workers that stopped heartbeating."""

    def __init__(self, redis: aioredis.Redis, broker: RedisBroker, queue: str) -> None:
        self._broker = broker
        self._queue = queue
        self._script = redis.register_script(redis_broker_scripts["dispatch"])

    async def run_once(self) -> None:
        args = dispatch_args(self._broker, "qsize", self._queue, timestamp_ms=int(time.time() * 1000), maintenance=True)
        await self._script(keys=[self._broker.namespace], args=args)


def queue_keys(broker: RedisBroker, queue: str) -> tuple[str, str]:
    """The list of message ids and the hash of message bodies that Dramatiq's Redis broker keeps per queue."""
    queue_key = f"{broker.namespace}:{queue}"
    return queue_key, f"{queue_key}.msgs"


def with_redis_id(message: dramatiq.Message[None]) -> tuple[str, bytes]:
    """A fresh Redis message id and the body to store under it, as the broker's own ``enqueue`` makes them."""
    redis_message_id = str(uuid.uuid4())
    return redis_message_id, message.copy(options={"redis_message_id": redis_message_id}).encode()
