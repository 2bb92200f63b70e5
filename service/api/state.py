"""What an API process holds while it runs, opened in the Litestar lifespan and injected into handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import cast

import dramatiq
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from delivery import keys, store_layout
from delivery.dead_letters import DeadLetterStore
from delivery.destinations import DestinationStore
from delivery.epoch import StoreEpoch
from delivery.outbox import Outbox
from delivery.redis_client import connect, connect_storage, listen_url
from delivery.shares import API_NODES, Heartbeat
from delivery.signing_secrets import SecretStore
from schemas.stats import Stats
from schemas.tasks import Task, TaskRecord, TaskStatus
from service.api.auth import Authenticator
from service.api.live import LiveHub, heartbeat_tick_s
from service.api.live_sharded import ShardedListener, node_client
from service.api.rate_limit import RateLimiter
from service.api.store_watch import StoreWatch
from service.api.tenant_streams import TenantStreams
from service.broker import BrokerCheck, Enqueuer, create_broker, enqueuer_for
from service.kinds import KindRegistry, load_kinds
from service.settings import Settings
from service.tasks.event_log import EventLog
from service.tasks.listing import TaskList
from service.tasks.store import TaskStore

log = logging.getLogger("relay.api")

# The longest one Redis command of a request may take (or wait for a connection) before the request gets 503.
COMMAND_TIMEOUT_S = 2.0
# How long the start waits to learn the store's epoch before it leaves that to the watcher.
EPOCH_AT_START_S = 1.0


@dataclass
class ApiState:
    settings: Settings
    redis: aioredis.Redis
    broker: dramatiq.Broker
    kinds: KindRegistry
    auth: Authenticator
    tasks: TaskStore
    task_list: TaskList
    events: EventLog
    outbox: Outbox
    dead_letters: DeadLetterStore
    destinations: DestinationStore
    secrets: SecretStore
    rate_limiter: RateLimiter | None
    enqueuer: Enqueuer
    hub: LiveHub

    listen_redis: aioredis.Redis
    broker_check: BrokerCheck
    store_watch: StoreWatch
    # Open WebSockets and streams per tenant, across every API node (RELAY_TENANT_MAX_STREAMS).
    tenant_streams: TenantStreams
    # The store's epoch, watched so that a store that lost its data is noticed (see delivery.epoch).
    epoch: StoreEpoch
    # This process in the set of API processes alive (GET /v1/ops/cluster).
    heartbeat: Heartbeat
    # Open WebSockets per client address in this process (RELAY_WS_MAX_PER_CLIENT).
    ws_clients: Counter[str] = field(default_factory=Counter)
    # Open Server-Sent Event streams in this process, and per client address (RELAY_WS_MAX_PER_CLIENT bounds both).
    sse_streams: int = 0
    sse_clients: Counter[str] = field(default_factory=Counter)
    # GET /v1/stats's last figures per scope (None: every tenant's), with when they were computed (monotonic).
    stats_cache: dict[str | None, tuple[float, Stats]] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> ApiState:
        keys.use(keys.Layout.of(settings.partition_count, cluster=settings.cluster))
        # Every command of a request is bounded, so a stalled Redis answers 503 rather than hanging the client.
        redis = connect_storage(
            settings.storage_url,
            cluster=settings.cluster,
            command_timeout_s=COMMAND_TIMEOUT_S,
            pool_wait_s=COMMAND_TIMEOUT_S,
        )

        # The pattern subscription of a standalone store (on a cluster, sharded subscriptions: see ShardedListener).
        listen_redis = connect(listen_url(settings.storage_url), max_connections=2, retries=0)
        ttl = settings.record_ttl_s
        outbox = Outbox(
            redis=redis,
            flow=settings.flow,
            attempts_ttl_s=ttl,
            dead_letter_retention_s=settings.dead_letter_retention_s,
        )
        broker = create_broker(settings)
        enqueuer = enqueuer_for(broker, redis, settings)
        hub = LiveHub(
            redis=redis,
            listen_redis=listen_redis,
            # Presence outlives a few missed refreshes (the hub refreshes every third of it).
            presence_ttl_s=max(30.0, 3 * settings.ws_ping_interval_s),
            tick_s=heartbeat_tick_s(settings.ws_ping_interval_s, settings.ws_ping_timeout_s),
            sharded=(
                (
                    lambda hub: ShardedListener(
                        cast(RedisCluster, redis),
                        connect_node=node_client(settings.storage_url),
                        dispatch=hub.dispatch,
                        resync=hub.resync_channels,
                    )
                )
                if settings.cluster
                else None
            ),
        )
        return cls(
            settings=settings,
            redis=redis,
            broker=broker,
            kinds=load_kinds(settings.task_modules),
            auth=Authenticator(settings),
            tasks=TaskStore(
                redis=redis,
                record_ttl_s=ttl,
                retention_s=settings.event_retention_s,
                ack_timeout_s=settings.ws_ack_timeout_s,
                max_open_per_tenant=settings.tenant_max_open_tasks,
                flow=settings.flow,
            ),
            task_list=TaskList(redis=redis),
            events=EventLog(redis=redis, retention_s=settings.event_retention_s, flow=settings.flow),
            destinations=DestinationStore(redis=redis, flow=settings.flow),
            outbox=outbox,
            dead_letters=DeadLetterStore(redis=redis, outbox=outbox),
            secrets=SecretStore(redis=redis),
            rate_limiter=RateLimiter(redis=redis, rate=settings.submit_rate) if settings.submit_rate > 0 else None,
            hub=hub,
            enqueuer=enqueuer,
            listen_redis=listen_redis,
            broker_check=BrokerCheck(enqueuer),
            store_watch=StoreWatch(redis),
            tenant_streams=TenantStreams(redis=redis, limit=settings.tenant_max_streams),
            epoch=StoreEpoch(redis=redis, on_lost=hub.store_lost),
            heartbeat=Heartbeat(redis=redis, key=API_NODES, member=f"{socket.gethostname()}:{os.getpid()}"),
        )

    async def create_task(
        self,
        record: TaskRecord,
        *,
        idempotency_key: str | None,
        fingerprint: str,
        admit: bool = True,
        delay_s: float | None = None,
    ) -> Task:
        """Accept ``record`` and enqueue it (or return the task an Idempotency-Key already made).

        On the Redis broker in the storage Redis, the message is written in the step that accepts the task.
        Elsewhere it is sent after that step; if the broker fails then, the task is still owed and the
        workers' sweeper enqueues it once the broker answers, so the submission is accepted all the same.
        ``admit`` False (the store is full): only an Idempotency-Key used before is answered (see TaskStore.create).
        ``delay_s``: a scheduled task's wait, counted from now by Redis's clock (see TaskStore.create).
        """
        scheduled = record.status is TaskStatus.SCHEDULED  # enqueued by a worker's sweep when its time comes
        message = None if scheduled else self.enqueuer.inline(record.id)
        submitted = await self.tasks.create(
            record,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            message=message,
            admit=admit,
            delay_s=delay_s,
        )
        self.store_watch.stored(submitted.stored_bytes)
        if submitted.new and message is None and not scheduled:
            try:
                await self.enqueuer.enqueue([record.id])
            except (RedisError, OSError, dramatiq.errors.DramatiqError) as exc:
                log.warning("task %s is stored but not yet enqueued (%s); the sweeper will enqueue it", record.id, exc)
        return submitted.answer

    def counted_stream(
        self, chunks: AsyncGenerator[bytes, None], client: str, place: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """``chunks``, counted in :attr:`sse_streams` and under ``client`` in :attr:`sse_clients` while they are sent;
        ``place`` (the stream's in its tenant's count, see :class:`TenantStreams`) is given back at the end, and
        forgotten (left to expire) if the stream never starts: a client gone before the first byte."""
        stream = self._counted_stream(chunks, client, place)
        if place is not None:
            weakref.finalize(stream, self.tenant_streams.forget, place)
        return stream

    async def _counted_stream(
        self, chunks: AsyncGenerator[bytes, None], client: str, place: str | None
    ) -> AsyncGenerator[bytes, None]:
        self.sse_streams += 1
        self.sse_clients[client] += 1
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.sse_streams -= 1
            self.sse_clients[client] -= 1
            if self.sse_clients[client] <= 0:
                del self.sse_clients[client]
            self.tenant_streams.release(place)
            await chunks.aclose()

    async def start(self) -> None:
        # A store cut into other partitions than this process's is refused (Redis away at start: not known yet).
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(store_layout.check(self.redis, keys.layout()), EPOCH_AT_START_S)
        # Learn the epoch (or write a new store's) before /ready is asked; Redis may be away at start: then later.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.epoch.check(), EPOCH_AT_START_S)
        self.enqueuer.start()
        self.epoch.start()
        self.heartbeat.start()
        await self.hub.start()
        self.tenant_streams.start()

    async def close(self) -> None:
        await self.heartbeat.stop()
        await self.store_watch.close()
        await self.epoch.stop()
        await self.hub.stop()
        await self.tenant_streams.stop()
        await self.enqueuer.close()
        await asyncio.to_thread(self.broker.close)
        await self.redis.aclose()
        await self.listen_redis.aclose()
