"""What an API process holds while it runs, opened in the Litestar lifespan and injected into handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dramatiq
import redis.asyncio as aioredis

from delivery.dead_letters import DeadLetterStore
from delivery.event_log import EventLog
from delivery.outbox import Outbox
from delivery.redis_client import connect
from delivery.signing_secrets import SecretStore
from service.auth import Authenticator
from service.broker import create_broker, enqueue_task
from service.kinds import KindRegistry, load_kinds
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

    @classmethod
    def open(cls, settings: Settings) -> ApiState:
        redis = connect(settings.storage_url)
        ttl = settings.record_ttl_s
        outbox = Outbox(redis=redis, lease_s=settings.webhook_timeout_s + 30, attempts_ttl_s=ttl)
        return cls(
            settings=settings,
            redis=redis,
            broker=create_broker(settings),
            kinds=load_kinds(settings.task_modules),
            auth=Authenticator(settings),
            tasks=TaskStore(redis=redis, record_ttl_s=ttl, retention_s=settings.event_retention_s),
            events=EventLog(redis=redis),
            outbox=outbox,
            dead_letters=DeadLetterStore(redis=redis, outbox=outbox),
            secrets=SecretStore(redis=redis),
            rate_limiter=RateLimiter(redis=redis, rate=settings.submit_rate) if settings.submit_rate > 0 else None,
        )

    async def enqueue(self, task_id: str) -> None:
        # Dramatiq's brokers are blocking clients: keep them off the event loop.
        await asyncio.to_thread(enqueue_task, self.broker, task_id)

    async def close(self) -> None:
        await asyncio.to_thread(self.broker.close)
        await self.redis.aclose()
