"""The worker side: the ``run_task`` actor and the per-process runtime it uses.

Each worker process (Dramatiq forks them) builds one :class:`Runtime` after boot, on the event loop thread
that Dramatiq's AsyncIO middleware runs: a Redis pool, the task store and the delivery engine. The actor
and the engine share that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import dramatiq
import msgspec
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.redis import _scripts as redis_broker_scripts

from delivery.engine import DeliveryEngine
from delivery.outbox import Outbox
from delivery.redis_client import connect
from delivery.signing_secrets import SecretStore
from delivery.webhook import WebhookSender, create_client
from schemas.tasks import TaskError, TaskRecord, TaskStatus
from service import USER_AGENT
from service.broker import HEARTBEAT_TIMEOUT_MS, QUEUE
from service.kinds import KindRegistry, TaskContext, load_kinds
from service.settings import Settings
from service.task_store import TaskStore

log = logging.getLogger("relay.worker")

# A task still running after this long is marked `running` (shorter ones go from queued to their end).
RUNNING_AFTER_S = 0.05
# How often a worker process tells the broker it is alive (and requeues the work of dead ones).
HEARTBEAT_INTERVAL_S = 2.0

_runtime: Runtime | None = None


class Runtime:
    """What one worker process holds while it runs."""

    def __init__(self, settings: Settings, broker: dramatiq.Broker) -> None:
        self.settings = settings
        self.broker = broker
        # httpx logs every request at INFO: too loud at thousands a second, and URLs may carry tokens.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.kinds: KindRegistry = load_kinds(settings.task_modules)
        self.redis = connect(settings.storage_url)
        ttl = settings.record_ttl_s
        self.tasks = TaskStore(
            redis=self.redis,
            record_ttl_s=ttl,
            retention_s=settings.event_retention_s,
            ack_timeout_s=settings.ws_ack_timeout_s,
        )
        self.outbox = Outbox(redis=self.redis, lease_s=settings.webhook_timeout_s + 30, attempts_ttl_s=ttl)
        self.http = create_client(timeout_s=settings.webhook_timeout_s, allow_private=settings.allow_private_callbacks)
        self.engine = DeliveryEngine(
            outbox=self.outbox,
            sender=WebhookSender(
                client=self.http, allow_private=settings.allow_private_callbacks, user_agent=USER_AGENT
            ),
            secrets=SecretStore(redis=self.redis),
            schedule_s=settings.retry_schedule_s,
        )
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.engine.start()
        if isinstance(self.broker, RedisBroker):
            self._heartbeat = asyncio.create_task(self._beat(self.broker), name="relay-broker-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self.engine.stop()
        await self.http.aclose()
        await self.redis.aclose()

    async def _beat(self, broker: RedisBroker) -> None:
        """Keep this process's broker heartbeat fresh and run broker maintenance.

        Dramatiq heartbeats only when a consumer fetches, which a process busy with long tasks does not do;
        and it requeues a dead worker's messages only on a random 0.1 % of fetches. Both matter here: a
        killed worker's tasks must run again within seconds, and a busy one must not be taken for dead.
        """
        script = self.redis.register_script(redis_broker_scripts["dispatch"])
        max_unpack = await asyncio.to_thread(broker._max_unpack_size)
        while True:
            try:
                await script(
                    keys=[broker.namespace],
                    args=[
                        "qsize",
                        int(time.time() * 1000),
                        QUEUE,
                        broker.broker_id,
                        HEARTBEAT_TIMEOUT_MS,
                        broker.dead_message_ttl,
                        1,
                        max_unpack,
                    ],
                )
            except Exception:
                log.exception("broker heartbeat failed; trying again")
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not started (RuntimeMiddleware is missing)")
    return _runtime


class RuntimeMiddleware(dramatiq.Middleware):
    """Starts the process's :class:`Runtime` after boot and stops it at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("the AsyncIO middleware must come before RuntimeMiddleware")

        async def build() -> Runtime:
            rt = Runtime(self.settings, broker)
            await rt.start()
            return rt

        _runtime = loop_thread.run_coroutine(build())

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            loop_thread.run_coroutine(_runtime.stop())
        _runtime = None


async def run_task(task_id: str) -> None:
    """Run one task to its end and hand its webhook to the delivery engine."""
    rt = runtime()
    record = await rt.tasks.get(task_id)
    if record is None:
        log.warning("task %s is gone (expired or never stored); nothing to run", task_id)
        return
    if record.status.finished:
        return  # a redelivered message of a task that already ended
    result, error = await _execute(rt, record)
    _, delivery, secrets = await rt.tasks.finish(record, result=result, error=error, lease_s=rt.outbox.lease_s)
    if delivery is not None:
        rt.engine.dispatch(delivery, secrets)


async def _execute(rt: Runtime, record: TaskRecord) -> tuple[Any, TaskError | None]:
    kind = rt.kinds.get(record.kind)
    if kind is None:
        return None, TaskError(type="UnknownKind", message=f"no task kind {record.kind!r} on this worker")
    record.started_at = record.started_at or datetime.now(UTC)

    async def report(percent: float, message: str | None) -> None:
        await mark_running()
        await rt.tasks.report_progress(record, percent, message)

    async def mark_running() -> None:
        if record.status is TaskStatus.QUEUED:
            await rt.tasks.mark_running(record)

    ctx = TaskContext(task_id=record.id, report=report, loop=asyncio.get_running_loop())
    try:
        data = kind.parse_input(record.input)
        run = asyncio.ensure_future(asyncio.wait_for(kind.run(data, ctx), timeout=kind.time_limit_s))
        # A task that ends within RUNNING_AFTER_S goes straight from queued to its end: nobody could have
        # seen it running, and the write would cost every short task a round trip.
        done, _ = await asyncio.wait({run}, timeout=RUNNING_AFTER_S)
        if not done:
            await mark_running()
        result = await run
        msgspec.json.encode(result)  # a result that cannot be sent fails here, not in the webhook
    except TimeoutError:
        return None, TaskError(
            type="TimeLimitExceeded", message=f"the task ran longer than its {kind.time_limit_s:g} s time limit"
        )
    except Exception as exc:
        log.info("task %s (%s) failed: %s: %s", record.id, record.kind, type(exc).__name__, exc)
        return None, TaskError(type=type(exc).__name__, message=str(exc)[:2000])
    return result, None
