"""The worker side: the per-process runtime that the ``run_task`` actor hands its runs to.

Each worker process (Dramatiq forks them) builds one :class:`Runtime` before it takes any message, on the event
loop thread that Dramatiq's AsyncIO middleware runs: a Redis pool, the task store, the task ledger, the delivery
engine and the periodic jobs (lease renewal, the sweeper, the broker heartbeat). That loop runs Relay's own code
only; kinds' code runs on kind loops of its own (:mod:`service.worker.kind_loops`), so that a kind that blocks
its loop stalls neither a lease, nor the sweeper, nor a delivery, nor another tenant's task.

A run holds its task's lease (see :mod:`service.tasks.ledger`) and renews it while it runs; a run whose lease
is lost is cancelled. Redis errors never end a task: its writes are retried until Redis answers, and a run
that cannot start is left to the sweeper, which enqueues every overdue task again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import dramatiq
import httpx
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from redis.exceptions import RedisError

from delivery import background, keys, store_layout
from delivery.destinations import DestinationStore
from delivery.engine import DeliveryEngine
from delivery.epoch import StoreEpoch
from delivery.errors import RelayError
from delivery.ops_events import OpsNotifier
from delivery.outbox import Outbox, trim_dead_letter_index
from delivery.redis_client import connect, connect_storage
from delivery.shares import Shares
from delivery.signing_secrets import SecretStore
from delivery.webhook import WebhookSender, create_client
from service import USER_AGENT
from service.amqp import LINK_ERRORS
from service.broker import QUEUE, Enqueuer, RabbitmqEnqueuer, enqueuer_for
from service.dramatiq_redis import BrokerMaintenance
from service.kinds import KindRegistry, load_kinds
from service.settings import Settings
from service.tasks.ledger import TaskLedger
from service.tasks.store import TaskStore
from service.worker.kind_loops import KindLoops, KindRun

log = logging.getLogger("relay.worker")

# How often a worker process tells the broker it is alive (and requeues the work of dead ones).
HEARTBEAT_INTERVAL_S = 2.0
# How long a worker's start waits to check the store's layout before it leaves that (Redis may be away).
LAYOUT_CHECK_S = 1.0
# How long start-up waits for RabbitMQ to declare the queue (a pika connection attempt alone may take 10 s).
DECLARE_AT_START_S = 5.0
# How often each worker process looks for overdue tasks (with jitter, so processes take turns).
SWEEP_INTERVAL_S = 1.0
# How often a worker drops expired dead letters from their index.
TRIM_INTERVAL_S = 60.0
# A write that Redis refuses is tried again after a wait that doubles up to this.
MAX_RETRY_WAIT_S = 2.0
# A write that keeps failing is logged again this often.
RETRY_WARN_EVERY_S = 60.0
# How long a run waits for Redis before it leaves its task to the sweeper (it has written nothing yet).
START_PATIENCE_S = 10.0

# At a stop, runs in flight get this long to end; those still running then are cancelled and given back.
SHUTDOWN_GRACE_S = 5.0
# How long cancelled runs get to end before their tasks are given back.
CANCEL_WAIT_S = 2.5  # longer than the grace a cancelled kind's code gets (actor.CANCEL_GRACE_S, 2 s): a run is
# given back only once its code has stopped, never while its cleanup still runs beside a rerun elsewhere
# How often a Dramatiq thread waiting for a free run slot looks whether the worker is stopping.
SLOT_POLL_S = 0.1
# Failures of Redis or the broker, as the clients raise them.
INFRA_ERRORS = (RedisError, OSError, dramatiq.errors.DramatiqError)

T = TypeVar("T")


class Stopping(RelayError):
    """The worker is shutting down while a write still waits for Redis (the sweeper runs the task again)."""


@dataclass
class Run:
    """A task this process is running: its lease token and its kind's code on a kind loop."""

    token: str
    work: KindRun | None = None
    lost: bool = False
    # Its end (or retry) is being written: the task leaves the owed set in that step, so a renewal that meanwhile
    # finds it gone found this run's own end, not a cancel or another run.
    ending: bool = False
    # Woken by lose(): what the run waits on besides the kind's end (a plain future: cheaper than an Event's task).
    waiter: asyncio.Future[None] | None = None

    def lose(self) -> None:
        """This run is over (its lease is lost, the task was cancelled, the worker stops): cancel the kind's code."""
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.work is not None:
            self.work.cancel()


_runtime: Runtime | None = None


class Runtime:
    """What one worker process holds while it runs."""

    def __init__(self, settings: Settings, broker: dramatiq.Broker) -> None:
        self.settings = settings
        self.broker = broker
        # httpx logs every request at INFO: too loud at thousands a second, and URLs may carry tokens.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.kinds: KindRegistry = load_kinds(settings.task_modules)
        keys.use(keys.Layout.of(settings.partition_count, cluster=settings.cluster))
        self.redis = connect_storage(settings.storage_url, cluster=settings.cluster)
        ttl = settings.record_ttl_s
        self.tasks = TaskStore(
            redis=self.redis,
            record_ttl_s=ttl,
            retention_s=settings.event_retention_s,
            ack_timeout_s=settings.ws_ack_timeout_s,
            flow=settings.flow,
        )
        self.ledger = TaskLedger(redis=self.redis)
        self.enqueuer: Enqueuer = enqueuer_for(broker, self.redis, settings)
        self.runs: dict[str, Run] = {}
        self.stopping = False
        self.outbox = Outbox(
            redis=self.redis,
            flow=settings.flow,
            attempts_ttl_s=ttl,
            dead_letter_retention_s=settings.dead_letter_retention_s,
        )
        self.http = create_client(timeout_s=settings.webhook_timeout_s, allow_private=settings.allow_private_callbacks)
        secrets = SecretStore(redis=self.redis)
        self.ops: OpsNotifier | None = None
        self.ops_http: httpx.AsyncClient | None = None
        if settings.ops_webhook_url:
            # The operator's own endpoint, set by the operator: private addresses are allowed there.
            self.ops_http = create_client(timeout_s=settings.webhook_timeout_s, allow_private=True, max_connections=4)
            self.ops = OpsNotifier(
                url=settings.ops_webhook_url,
                sender=WebhookSender(client=self.ops_http, allow_private=True, user_agent=USER_AGENT),
                secrets=secrets,
                destinations=DestinationStore(redis=self.redis, flow=settings.flow),
            )
        # This worker's share of the periodic work over the partitions (see delivery.shares).
        self.shares = Shares(redis=self.redis, member=f"{socket.gethostname()}:{os.getpid()}")
        self.engine = DeliveryEngine(
            outbox=self.outbox,
            sender=WebhookSender(
                client=self.http, allow_private=settings.allow_private_callbacks, user_agent=USER_AGENT
            ),
            secrets=secrets,
            schedule_s=settings.retry_schedule_s,
            ops=self.ops,
            partitions=self.shares.poller(),
        )
        # Watched so that a store that lost its data is said once, at ERROR (see delivery.epoch).
        self.epoch = StoreEpoch(redis=self.redis, on_lost=self._store_lost)
        self._loops: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._abandon: asyncio.Task[None] | None = None
        # Runs started by messages, and the slots that bound them (set by RuntimeMiddleware: one per thread).
        self._run_tasks: set[asyncio.Task[None]] = set()
        self._slots = threading.BoundedSemaphore(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.kind_loops = KindLoops()

    def set_capacity(self, runs: int) -> None:
        """At most ``runs`` runs at once in this process (Dramatiq's ``--threads``)."""
        self._slots = threading.BoundedSemaphore(runs)

    def hand_over(self, run: Callable[[str], Coroutine[Any, Any, None]], task_id: str) -> None:
        """Start ``run(task_id)`` on the event loop and return once it is started; called in a Dramatiq thread.

        The thread does not wait for the run to end (it waited before, on a future the loop completed: that hand-off
        cost a message about 130 µs of CPU, more than Dramatiq's own handling of it). It waits only for a free run
        slot, so that a process never runs more tasks at once than it has threads. The message is acked when this
        returns; what the run owes is in the task ledger from then on, as it was before.
        """
        while not self._slots.acquire(timeout=SLOT_POLL_S):
            if self.stopping:
                return  # never started: the task is owed, and the sweeper enqueues it again
        loop = self._loop
        if loop is None or self.stopping:
            self._slots.release()
            return
        loop.call_soon_threadsafe(self._start_run, run, task_id)

    def _start_run(self, run: Callable[[str], Coroutine[Any, Any, None]], task_id: str) -> None:
        task = asyncio.create_task(run(task_id), name=f"relay-run-{task_id}")
        self._run_tasks.add(task)
        task.add_done_callback(self._run_ended)

    def _run_ended(self, task: asyncio.Task[None]) -> None:
        self._run_tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("a run failed", exc_info=task.exception())

    async def start(self) -> None:
        """Start the background loops; nothing here waits for Redis (it may be down when a worker starts)."""
        self._loop = asyncio.get_running_loop()
        # A store cut into other partitions than this process's is refused (Redis away at start: not known yet).
        with contextlib.suppress(*INFRA_ERRORS, TimeoutError):
            await asyncio.wait_for(store_layout.check(self.redis, keys.layout()), LAYOUT_CHECK_S)
        self.enqueuer.start()
        if isinstance(self.enqueuer, RabbitmqEnqueuer):
            # Declared here, the queue needs no connection of the consumers' threads (see RabbitmqEnqueuer.declare);
            # RabbitMQ away at start: the consumers declare it once it answers.
            with contextlib.suppress(*INFRA_ERRORS, *LINK_ERRORS, TimeoutError):
                await asyncio.wait_for(self.enqueuer.declare(), DECLARE_AT_START_S)
        self.kind_loops.start()
        self.shares.start()
        await self.engine.start()
        self.epoch.start()
        self._loops.append(asyncio.create_task(self._renew_leases(), name="relay-lease-renewal"))
        self._sweeper = asyncio.create_task(self._sweep(), name="relay-task-sweeper")
        if isinstance(self.broker, RedisBroker):
            self._loops.append(asyncio.create_task(self._beat(self.broker), name="relay-broker-heartbeat"))

    def _store_lost(self) -> None:
        """The store lost its data: the tasks of the runs in flight are gone with it. Cancel those runs, said in one
        line rather than one a task as each run finds out on its own."""
        if not self.runs:
            return
        log.warning(
            "cancelling %d runs whose tasks were lost with the store: %s",
            len(self.runs),
            ", ".join(sorted(self.runs)[:20]),
        )
        for run in list(self.runs.values()):
            run.lose()

    async def begin_stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Shutdown starts: enqueue nothing more; runs in flight get ``grace_s`` to end, then are given back."""
        self.stopping = True
        await _cancel(self._sweeper)
        self._sweeper = None
        if self._abandon is None:
            self._abandon = asyncio.create_task(self._abandon_runs(grace_s), name="relay-abandon-runs")

    async def _abandon_runs(self, grace_s: float) -> None:
        """Cancel the runs still going after ``grace_s`` and give their tasks back, owed at once, so that they
        run again at the next sweep (here after a restart, or in another worker) rather than at lease end."""
        if self._run_tasks:
            await asyncio.wait(set(self._run_tasks), timeout=grace_s)
        runs = {task_id: run.token for task_id, run in self.runs.items()}
        if not runs:
            return
        for run in list(self.runs.values()):
            run.lose()
        if self._run_tasks:  # they see their cancellation and end (what they might still write needs the lease)
            await asyncio.wait(set(self._run_tasks), timeout=CANCEL_WAIT_S)
        try:
            given_back = await self.ledger.release(runs)
        except INFRA_ERRORS as exc:
            log.warning(
                "stopping: %d runs cancelled; giving them back failed (%s), so they run again once their leases end",
                len(runs),
                exc,
            )
            return
        log.warning(
            "stopping: %s still running after %g s %s cancelled and will run again: %s",
            "1 task" if given_back == 1 else f"{given_back} tasks",
            grace_s,
            "was" if given_back == 1 else "were",
            ", ".join(sorted(runs)[:20]),
        )

    async def stop(self) -> None:
        await self.begin_stop()
        if self._abandon is not None:  # runs in flight end, or are given back, first
            with contextlib.suppress(Exception):
                await self._abandon
        for loop in self._loops:
            await _cancel(loop)
        self._loops = []
        await self.epoch.stop()
        await self.kind_loops.stop()
        await self.engine.stop()
        await self.shares.stop()  # leaves the set: its partitions move to the others now
        if self.ops is not None:
            await self.ops.stop()
        if self.ops_http is not None:
            await self.ops_http.aclose()
        await self.http.aclose()
        await self.enqueuer.close()
        await self.redis.aclose()

    async def until_redis_answers(
        self, write: Callable[[], Awaitable[T]], *, what: str, patience_s: float | None = None
    ) -> T:
        """Do ``write``, trying again while Redis (or the broker) fails, until it answers.

        Raises :class:`Stopping` when the worker shuts down first, and the last error once ``patience_s``
        has passed (when given).
        """
        wait_s, started, warned_at, failures = 0.05, time.monotonic(), 0.0, 0
        while True:
            try:
                return await write()
            except INFRA_ERRORS as exc:
                if patience_s is not None and time.monotonic() - started > patience_s:
                    raise
                failures += 1
                if time.monotonic() - warned_at > RETRY_WARN_EVERY_S:  # the first failure, then once a minute
                    warned_at = time.monotonic()
                    log.warning(
                        "%s failed %d times (%s: %s); trying again until Redis answers",
                        what,
                        failures,
                        type(exc).__name__,
                        exc,
                    )
            if self.stopping and time.monotonic() - started > MAX_RETRY_WAIT_S:
                raise Stopping(what)
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, MAX_RETRY_WAIT_S)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.ledger.lease_s / 3)
            runs = {task_id: run.token for task_id, run in self.runs.items()}
            try:
                lost = await self.ledger.renew(runs)
            except INFRA_ERRORS as exc:
                log.warning("renewing %d leases failed (%s); trying again", len(runs), exc)
                continue
            except Exception:
                log.exception("renewing %d leases failed; trying again", len(runs))
                continue
            for task_id in lost:
                run = self.runs.get(task_id)
                if run is not None and run.token == runs.get(task_id) and not run.ending:
                    log.warning(
                        "task %s: this run lost its lease (the task ended or runs elsewhere); cancelling", task_id
                    )
                    run.lose()

    async def _sweep(self) -> None:
        trimmed_at = 0.0
        to_poll = self.shares.poller()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S * random.uniform(0.5, 1.5))
            trim = time.monotonic() - trimmed_at > TRIM_INTERVAL_S
            if trim:
                trimmed_at = time.monotonic()
            for partition in to_poll():
                try:
                    await self._sweep_partition(partition, trim=trim)
                except INFRA_ERRORS as exc:
                    # Their deadlines moved on already: the next sweep that finds them due enqueues them.
                    log.warning("sweeping overdue tasks failed (%s); trying again", exc)
                    break
                except Exception:
                    # A bug must not end the sweeper, which is what brings lost work back: say it, go on.
                    log.exception("sweeping partition %d failed; trying again", partition.index)
                    break

    async def _sweep_partition(self, partition: keys.Partition, *, trim: bool) -> None:
        if trim:
            await trim_dead_letter_index(self.redis, partition, retention_s=self.settings.dead_letter_retention_s)
        due = await self.ledger.promote(partition)
        if due:
            await self.enqueuer.enqueue(due)
            log.info("enqueued %d scheduled tasks whose time has come", len(due))
        overdue = await self.ledger.sweep(partition)
        if overdue:
            await self.enqueuer.enqueue(overdue)
            log.info(
                "enqueued %d owed tasks again (given back by a worker that stopped, or their messages or "
                "runs were lost)",
                len(overdue),
            )

    async def _beat(self, broker: RedisBroker) -> None:
        """Keep this process's broker heartbeat fresh and run broker maintenance.

        Dramatiq heartbeats only when a consumer fetches, which a process busy with long tasks does not do;
        and it requeues a dead worker's messages only on a random 0.1 % of fetches. Both matter here: a
        killed worker's tasks must run again within seconds, and a busy one must not be taken for dead.
        """
        # The broker's own Redis: the storage Redis, or a standalone one beside it (a cluster's broker, say).
        broker_redis = self.redis if self.settings.broker_in_storage else connect(self.settings.effective_broker_url)
        maintenance = BrokerMaintenance(broker_redis, broker, QUEUE)
        try:
            while True:
                try:
                    await maintenance.run_once()
                except INFRA_ERRORS as exc:
                    log.warning("broker heartbeat failed (%s); trying again", exc)
                await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        finally:
            if broker_redis is not self.redis:
                await broker_redis.aclose()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    await background.stop(task)


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not started (RuntimeMiddleware is missing)")
    return _runtime


class RuntimeMiddleware(dramatiq.Middleware):
    """Builds the process's :class:`Runtime` before its worker threads take messages, and stops it last.

    At shutdown the sweeper stops first; runs in flight get the grace to finish with the runtime still up (their
    messages were acked when they started: the task ledger holds what they owe), those still running are
    cancelled and given back, and only then are its loops and connections closed.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("the AsyncIO middleware must come before RuntimeMiddleware")

        async def build() -> Runtime:
            rt = Runtime(self.settings, broker)
            rt.set_capacity(worker.worker_threads)
            await rt.start()
            return rt

        _runtime = loop_thread.run_coroutine(build())

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            loop_thread.run_coroutine(_runtime.begin_stop())

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            loop_thread.run_coroutine(_runtime.stop())
        _runtime = None
