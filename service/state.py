"""What an API process holds while it runs, opened in the Litestar lifespan and injected into handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dramatiq
import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker

from delivery.dead_letters import DeadLetterStore
from delivery.event_log import EventLog
from delivery.outbox import Outbox
from delivery.redis_client import connect
from delivery.signing_secrets import SecretStore
from schemas.tasks import Task, TaskRecord
from service.auth import Authenticator
from service.broker import RedisEnqueuer, create_broker, enqueue_task
from service.kinds import KindRegistry, load_kinds
from service.live import LiveHub
from service.rate_limit import RateLimiter
from service.settings import Settings
from service.task_store import TaskStore


@dataclass
class ApiState:
    settings: Settings
    redis: aioredis.Redis
    broker: dramatiq.Broker
    kinds: KindRegistry
    auth: Authenticator
    tasks: TaskStore
    events: EventLog
    outbox: Outbox
    dead_letters: DeadLetterStore
    secrets: SecretStore
    rate_limiter: RateLimiter | None
    redis_enqueuer: RedisEnqueuer | None
    hub: LiveHub

    @classmethod
    def open(cls, settings: Settings) -> ApiState:
        redis = connect(settings.storage_url)
        ttl = settings.record_ttl_s
        outbox = Outbox(redis=redis, lease_s=settings.webhook_timeout_s + 30, attempts_ttl_s=ttl)
        broker = create_broker(settings)
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
            ),
            events=EventLog(redis=redis, retention_s=settings.event_retention_s),
            outbox=outbox,
            dead_letters=DeadLetterStore(redis=redis, outbox=outbox),
            secrets=SecretStore(redis=redis),
            rate_limiter=RateLimiter(redis=redis, rate=settings.submit_rate) if settings.submit_rate > 0 else None,
            # On a Redis broker in the storage Redis, the task and its message go in one round trip.
            # Presence outlives a few missed refreshes (the hub refreshes every third of it).
            hub=LiveHub(redis=redis, presence_ttl_s=max(30.0, 3 * settings.ws_ping_interval_s)),
            redis_enqueuer=RedisEnqueuer(broker, redis)
            if isinstance(broker, RedisBroker) and settings.effective_broker_url == settings.storage_url
            else None,
        )

    async def create_task(self, record: TaskRecord, *, idempotency_key: str | None) -> Task:
        """Store ``record`` and enqueue it (or return the task an Idempotency-Key already made)."""
        if self.redis_enqueuer is not None:
            return await self.tasks.create(record, idempotency_key=idempotency_key, enqueue=self.redis_enqueuer.stage)
        stored = await self.tasks.create(record, idempotency_key=idempotency_key)
        if stored.id == record.id:
            try:
                # Dramatiq's other brokers are blocking clients: keep them off the event loop.
                await asyncio.to_thread(enqueue_task, self.broker, record.id)
            except BaseException:
                await self.tasks.discard(record)
                raise
        return stored

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.stop()
        await asyncio.to_thread(self.broker.close)
        await self.redis.aclose()
