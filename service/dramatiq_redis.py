"""What Relay relies on inside Dramatiq's Redis broker, in one place.

Two things Dramatiq keeps private are used here, and a test (``tests/service/test_dramatiq_redis.py``) fails
when a Dramatiq release changes either:

- the broker's ``dispatch`` Lua script and its argument list, which the worker calls to keep its heartbeat
  fresh and to requeue a dead worker's messages (Dramatiq does both only when a consumer fetches, and the
  maintenance only on a random 0.1 % of fetches);
- the layout of an enqueued message (a hash of bodies by Redis message id and a list of ids per queue), which
  the submit step writes itself in the same Lua step that stores the task;
- the set of message ids a worker has fetched and not yet acked, which :class:`BatchAckConsumer` acks in
  batches;
- the consumer's fetch (``do_fetch``) and its message cache, which :class:`BatchAckConsumer` drives itself so
  that an idle consumer waits on the queue's wake list (:func:`wake_key`) instead of sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import msgspec
import redis
import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.redis import _scripts as redis_broker_scripts
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed

from delivery.scripts import Step, StepArgs, StepKeys, step, wire
from delivery.store_refusals import refusal_of


@dataclass(frozen=True, slots=True)
class InlineMessage:
    """A broker message that the submit step itself enqueues (the Redis broker, in the storage Redis)."""

    queue_key: str
    messages_key: str
    wake_key: str  # pushed so that an idle worker fetches the message at once (see :func:`wake_key`)
    message_id: str
    body: bytes


log = logging.getLogger("relay.worker")

# The dispatch script unpacks in chunks of this size during maintenance (Dramatiq uses half Lua's stack).
MAX_UNPACK = 1000

# Dramatiq's dispatch script (fetch, ack, enqueue, heartbeat, maintenance), made to run when the store is full:
# its own first write is the heartbeat's ZADD, which Redis refuses at maxmemory, so a full store stopped every
# fetch and heartbeat (and other workers then took a busy one for dead). A first write that Redis lets through
# (this ZREM of a member that never exists) lets the rest through; what it writes is a heartbeat's score and
# message ids moved between lists and sets (see delivery/store_refusals.py). Not an enqueue, which writes a whole
# message: that one a full store refuses, as it refuses a submission.
# Its timestamp (ARGV[2], the calling host's clock) is Redis's clock instead: workers' heartbeats are compared with
# each other's by the maintenance of any worker, and a host whose clock ran ahead took the others for dead (their
# fetched messages were requeued while they ran them). The argument is still passed, and no longer read.
_DRAMATIQ_TIMESTAMP = b"local timestamp = ARGV[2]\n"
_REDIS_TIMESTAMP = (
    b"local clock = redis.call('TIME')\n"
    b"local timestamp = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)\n"
)
DISPATCH = Step.of_text(
    "dramatiq:dispatch",
    b'if ARGV[1] ~= "enqueue" then redis.call("zrem", KEYS[1] .. ":__heartbeats__", "") end  -- see above\n'
    + redis_broker_scripts["dispatch"].replace(_DRAMATIQ_TIMESTAMP, _REDIS_TIMESTAMP, 1),
)


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
        self._script = DISPATCH.bind(redis)

    async def run_once(self) -> None:
        args = dispatch_args(self._broker, "qsize", self._queue, timestamp_ms=int(time.time() * 1000), maintenance=True)
        await self._script(keys=[self._broker.namespace], args=args)


def queue_keys(broker: RedisBroker, queue: str) -> tuple[str, str]:
    """The list of message ids and the hash of message bodies that Dramatiq's Redis broker keeps per queue."""
    queue_key = f"{broker.namespace}:{queue}"
    return queue_key, f"{queue_key}.msgs"


def wake_key(broker: RedisBroker, queue: str) -> str:
    """A list of at most one element, pushed when a message is enqueued, that an idle consumer blocks on.

    Dramatiq's Redis consumer polls: when a fetch finds nothing it sleeps, longer after each empty fetch, up to
    the worker's timeout (100 ms here), so the first task after a quiet moment waited up to that long before a
    worker even saw it (the start of each paced phase of scripts/bench: p99 60-70 ms at half rate against 25 ms
    in the runs where the consumer happened to be awake). Relay's enqueues (the submit step, the sweeper) push a
    token here when it is empty; an idle :class:`BatchAckConsumer` waits for it with BLPOP for as long as it
    would have slept. Enqueues that do not push (Dramatiq's own, a broker in another Redis) are still fetched:
    the wait times out.
    """
    return f"{broker.namespace}:{queue}.wake"


class _MessageBody(msgspec.Struct):
    """A Dramatiq message as ``Message.encode`` writes it (``Message.decode`` reads these fields back)."""

    queue_name: str
    actor_name: str
    args: tuple[str]
    kwargs: dict[str, Any]
    options: dict[str, str]
    message_id: str
    message_timestamp: int


_encode_body = msgspec.json.Encoder().encode


def message_for(queue: str, actor: str, arg: str) -> tuple[str, bytes]:
    """A fresh Redis message id and the body of a message calling ``actor(arg)``, as the broker's own ``enqueue``
    makes them from a ``dramatiq.Message``, at half the cost (one per submitted task)."""
    redis_message_id = str(uuid.uuid4())
    body = _MessageBody(
        queue_name=queue,
        actor_name=actor,
        args=(arg,),
        kwargs={},
        options={"redis_message_id": redis_message_id},
        message_id=str(uuid.uuid4()),
        message_timestamp=int(time.time() * 1000),
    )
    return redis_message_id, _encode_body(body)


# Acks written together at most (more are written in the next batch).
ACK_BATCH = 256
# Acks one worker process has not yet written past which a flush that keeps failing forgets the oldest: their
# messages stay in the fetched set and come back once this process is gone (their tasks have ended by then).
MAX_PENDING_ACKS = 100_000


def fetched_key(broker: RedisBroker, queue: str) -> str:
    """The set of message ids this broker (one worker process) has fetched from ``queue`` and not acked."""
    return f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}"


class AckKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``ack_many.lua``: this worker process's fetched set of ``queue`` and the queue's messages."""

    fetched: str
    queue_messages: str

    @classmethod
    def of(cls, broker: RedisBroker, queue: str) -> AckKeys:
        return cls(fetched=fetched_key(broker, queue), queue_messages=queue_keys(broker, queue)[1])


class AckArgs(StepArgs, array_like=True, gc=False):
    """The arguments of ``ack_many.lua``: the ids of the messages acked."""

    repeated = True
    message_ids: list[str]


# Answers how many of them were still fetched (and are acked now).
_ACK_MANY = step(__file__, "ack_many.lua", keys=AckKeys, args=AckArgs)


class BatchAckConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, but acks are written in batches by the consumer's thread.

    Dramatiq acks each message from the worker thread that ran it, with one call of its dispatch script: a
    blocking round trip per message, taken by sixteen threads in turn under the GIL. It was 15 % of a worker
    process's CPU (py-spy, scripts/bench --profile). Here an ack is noted and the consumer's thread writes all
    that were noted in one script call each time it looks for messages (at least every ``timeout``), and at close.

    An ack that is late or never written only means that the message is delivered again if this process dies
    first; ``run_task`` then finds the task ended (or running elsewhere) in the task ledger and drops it.
    """

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._keys = wire(AckKeys.of(broker, queue_name))
        self._ack_many = _ACK_MANY.bind(broker.client)
        self._wake = wake_key(broker, queue_name)

    def ack(self, message: dramatiq.broker.MessageProxy) -> None:
        with self._lock:
            self._pending.append(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)  # room to prefetch another at once

    def __next__(self) -> dramatiq.broker.MessageProxy | None:
        """The next message, or None after waiting up to the back-off for one (Dramatiq's consumer contract)."""
        # Before each fetch (or wait for messages), and between fetches when enough have piled up.
        if self._pending and (not self.message_cache or len(self._pending) >= ACK_BATCH):
            self.flush_acks()
        try:
            if not self.message_cache and self.outstanding_message_count < self.prefetch:
                self.message_cache = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
            while self.message_cache:
                data = self.message_cache.pop(0)
                if data is None:  # a fetched id whose body is gone (Dramatiq skips these too)
                    continue
                self.misses = 0
                message = dramatiq.Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                return dramatiq.broker.MessageProxy(message)
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
            if self.outstanding_message_count < self.prefetch:
                # Room for more and none queued: wait for an enqueue's token, at most as long as the back-off.
                try:
                    # At least 1 ms: a BLPOP timeout of 0 would wait for ever.
                    self.broker.client.blpop([self._wake], timeout=max(backoff_ms, 1) / 1000)
                except redis.ResponseError as exc:  # the wake key is not a list: sleep, as Dramatiq does
                    log.warning("waiting on %s failed (%s); sleeping instead", self._wake, exc)
                    time.sleep(backoff_ms / 1000)
            else:
                time.sleep(backoff_ms / 1000)  # full: what is fetched has to be run first
            return None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis away or stalled: Dramatiq restarts the consumer, with one line in the log (an error it does
            # not know would be logged with its traceback, every second of a stall).
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            # Redis refusing writes (a read-only replica after a failover, a failed save, full): the same, a
            # state of the store the API reports, not a bug to log with its traceback at each fetch.
            if refusal_of(exc) is None:
                raise
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def flush_acks(self) -> bool:
        """Write up to ACK_BATCH of the noted acks; False when Redis refused (they are tried again later)."""
        with self._lock:
            ids, self._pending = self._pending[:ACK_BATCH], self._pending[ACK_BATCH:]
        if not ids:
            return True
        try:
            self._ack_many(keys=self._keys, args=wire(AckArgs(message_ids=ids)))
        except redis.RedisError as exc:
            with self._lock:
                self._pending[:0] = ids
                del self._pending[:-MAX_PENDING_ACKS]
            log.warning("acking %d messages failed (%s); trying again", len(ids), exc)
            return False
        return True

    def close(self) -> None:
        while self._pending and self.flush_acks():
            pass
        super().close()


class RelayRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with :class:`BatchAckConsumer`, whose dispatch runs when the store is full."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self.scripts["dispatch"] = DISPATCH.bind(self.client)

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return BatchAckConsumer
