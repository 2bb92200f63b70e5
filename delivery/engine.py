"""The delivery engine of one worker process: attempts webhooks now and claims the ones that fall due.

Webhooks of events a worker just produced are attempted at once when their destination lets them start (the step
that wrote the event leased them to this process); every other webhook is claimed from the destinations that are
ready, within each destination's caps, by polling. In-flight attempts of this process are bounded by a semaphore;
the poller claims no more than there are free slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.exceptions import RedisError

from delivery import keys
from delivery.destinations import breaker_outcome
from delivery.errors import SecretsUnavailable
from delivery.ops_events import OpsNotifier
from delivery.outbox import Kind, Lease, Outbox, Recorded, webhook_attempt
from delivery.policy import Decision, Verdict, decide
from delivery.records import PendingDelivery
from delivery.signing_secrets import SecretStore
from delivery.storage_away import is_away
from delivery.store_refusals import refusal_of
from delivery.webhook import WebhookSender
from schemas.dead_letters import DeadLetterReason
from schemas.deliveries import Attempt, Channel, DeliveryOutcome

log = logging.getLogger("relay.delivery")

# Webhooks one process attempts at once.
DEFAULT_CONCURRENCY = 256
# How often the schedule is polled when nothing is due.
DEFAULT_POLL_INTERVAL_S = 0.25
# Most webhooks claimed in one poll.
DEFAULT_CLAIM_BATCH = 200
# On a store of several partitions, the longest a partition that had nothing due waits to be looked at again.
QUIET_MAX_S = 1.0
# A store that refuses writes (read-only, a failed save) is said once this often, not at every poll.
REFUSAL_LOG_EVERY_S = 60.0

# The last error of a dead letter whose webhook its open destination held for its whole retry span.
NEVER_ATTEMPTED = "circuit open, never attempted"

_encode = msgspec.json.Encoder().encode


def attempts_text(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


class DeliveryEngine:
    def __init__(
        self,
        *,
        outbox: Outbox,
        sender: WebhookSender,
        secrets: SecretStore,
        schedule_s: Sequence[float],
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        claim_batch: int = DEFAULT_CLAIM_BATCH,
        ops: OpsNotifier | None = None,
        partitions: Callable[[], Sequence[keys.Partition]] = keys.partitions,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._outbox = outbox
        self._sender = sender
        self._secrets = secrets
        self._schedule_s = tuple(schedule_s)
        self._poll_interval_s = poll_interval_s
        self._claim_batch = claim_batch
        self._ops = ops
        self._partitions = partitions  # those to poll now (see delivery.shares)
        self._quiet: dict[int, tuple[float, float]] = {}  # partition -> (not looked at before, the wait it had)
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._in_flight: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="relay-delivery-poller")

    async def stop(self, *, grace_s: float = 5.0) -> None:
        """Stop claiming; give attempts in flight ``grace_s`` to finish (the rest resume after their lease)."""
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def dispatch(self, lease: Lease) -> None:
        """Attempt the webhook of ``lease`` (leased to this process) as soon as a slot is free."""
        self._spawn(self._attempt(lease))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _after_unacked_push(self, delivery: PendingDelivery) -> None:
        """No socket acked the event in time: write that down, then the webhook takes over (if there is one)."""
        unacked = Attempt(
            event_id=delivery.event_id,
            channel=Channel.WEBSOCKET,
            attempt=1,
            at=datetime.now(UTC),
            outcome=DeliveryOutcome.UNACKED,
            error="no socket acked the event in time",
        )
        try:
            verdict = Verdict.NOTED if delivery.url else Verdict.DROPPED
            recorded = await self._outbox.record(delivery, unacked, Decision(verdict))
        except Exception:
            log.exception(
                "recording the unacked push of event %s of task %s failed", delivery.event_id, delivery.task_id
            )
            return
        if recorded.next is not None:
            await self._attempt(recorded.next)

    async def _handoff(self, delivery: PendingDelivery) -> None:
        """A webhook from the general schedule (a replay) goes to its destination; it may start at once."""
        try:
            lease = await self._outbox.handoff(delivery)
        except Exception:
            log.exception("handing event %s of task %s to its destination failed", delivery.event_id, delivery.task_id)
            return
        if lease is not None:
            await self._attempt(lease)

    async def _attempt(self, lease: Lease) -> None:
        """Attempt ``lease`` in a slot of this process, then each next webhook its destination hands over."""
        async with self._slots:
            current: Lease | None = lease
            while current is not None:
                this = current
                try:
                    current = await (self.expire(this) if this.kind == Kind.EXPIRE else self.attempt(this))
                except SecretsUnavailable as exc:
                    # Nothing to sign with until the node of the tenant's secrets is back: the lease runs out and
                    # this webhook is claimed again. One line, not a traceback: nothing here is a bug.
                    log.warning(
                        "webhook attempt for event %s of task %s waits: %s",
                        this.delivery.event_id,
                        this.delivery.task_id,
                        exc,
                    )
                    return
                except Exception as exc:
                    # Redis went away or a bug: the lease runs out and this webhook is claimed again.
                    if is_away(exc):
                        log.warning(
                            "webhook attempt for event %s of task %s failed, storage away (%s: %s)",
                            this.delivery.event_id,
                            this.delivery.task_id,
                            type(exc).__name__,
                            exc,
                        )
                    else:
                        log.exception(
                            "webhook attempt for event %s of task %s failed",
                            this.delivery.event_id,
                            this.delivery.task_id,
                        )
                    return
                if self._stopping:
                    return  # a webhook handed over now waits for its lease to run out, then any worker sends it

    async def attempt(self, lease: Lease) -> Lease | None:
        """Make one attempt and record what follows it; the destination's next webhook, when it handed one over."""
        delivery = lease.delivery
        assert delivery.url is not None, "a WebSocket-only delivery has no webhook to attempt"
        if lease.secrets:
            live = lease.secrets  # read fresh by the step that leased it
            self._secrets.remember(delivery.tenant, live)
        else:
            # Read apart from the step (on a cluster the secrets live on another master), or not yet made: read now,
            # or sign with the last read while their master is away (SecretStore.signing says why that is safe).
            live = await self._secrets.signing(delivery.tenant)
        at = datetime.now(UTC)
        result = await self._sender.send(delivery.url, delivery.event_id, _encode(delivery.event), live)
        # A probe that finds the receiver still down is the destination's failure, not the webhook's.
        probe_failed = lease.kind == Kind.PROBE and breaker_outcome(result) == "fail"
        decision = decide(
            result, run_attempts=delivery.run_attempts + 1, schedule_s=self._schedule_s, probe=probe_failed
        )
        attempt = webhook_attempt(
            delivery,
            at=at,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            delivered=result.ok,
        )
        recorded = await self._outbox.record(delivery, attempt, decision, token=lease.token, result=result)
        self._after(delivery, recorded)
        return recorded.next

    async def expire(self, lease: Lease) -> Lease | None:
        """A webhook its open destination held past its retry span: a dead letter, without another attempt."""
        if lease.delivery.attempts == 0:
            lease.delivery.last_error = NEVER_ATTEMPTED  # rather than no error at all beside "0 attempts"
        decision = Decision(Verdict.DEAD, reason=DeadLetterReason.RETRIES_EXHAUSTED)
        recorded = await self._outbox.record(lease.delivery, None, decision, token=lease.token)
        self._after(lease.delivery, recorded)
        return recorded.next

    def _after(self, delivery: PendingDelivery, recorded: Recorded) -> None:
        dead = recorded.dead
        if dead is not None:
            log.warning(
                "event %s of task %s is a dead letter (%s, %s)%s",
                delivery.event_id,
                delivery.task_id,
                dead.reason.value,
                attempts_text(dead.attempts),
                f": {dead.last_error}" if dead.last_error else "",
            )
        if recorded.change and recorded.destination_id is not None:
            log.warning("destination %s (%s): %s", recorded.destination_id, delivery.tenant, recorded.change)
            if self._ops is not None:
                self._ops.notify(recorded.change, recorded.destination_id)

    async def _poll(self) -> None:
        refused_logged_at = float("-inf")
        while True:
            busy = False
            partitions = self._partitions()
            now = time.monotonic()
            for partition in partitions:
                free = self._concurrency - len(self._in_flight)
                if free <= 0:
                    break
                quiet = self._quiet.get(partition.index)
                if quiet is not None and now < quiet[0]:
                    continue
                staged: list[tuple[PendingDelivery, bool]] = []
                leases: list[Lease] = []
                try:
                    staged = await self._outbox.claim(partition, limit=min(free, self._claim_batch))
                    free -= len(staged)
                    if free > 0:
                        leases = await self._outbox.claim_destinations(partition, limit=min(free, self._claim_batch))
                except Exception as exc:
                    # Said once in a while, not at every poll of every partition (a storage away for a minute would
                    # otherwise write thousands of tracebacks); the partition waits as a quiet one does.
                    self._quiet[partition.index] = (now + QUIET_MAX_S, QUIET_MAX_S)
                    refusal = refusal_of(exc)
                    if time.monotonic() - refused_logged_at > REFUSAL_LOG_EVERY_S:
                        refused_logged_at = time.monotonic()
                        if refusal is not None:
                            log.warning("claiming due webhooks: %s; trying again", refusal.cause)
                        elif isinstance(exc, RedisError | OSError):
                            log.warning("claiming due webhooks failed (%s: %s); trying again", type(exc).__name__, exc)
                        else:
                            log.exception("claiming due webhooks failed; trying again")
                    continue
                for delivery, pushed in staged:
                    if pushed or delivery.url is None:
                        self._spawn(self._after_unacked_push(delivery))
                    else:
                        self._spawn(self._handoff(delivery))
                for lease in leases:
                    self.dispatch(lease)
                busy = busy or len(staged) >= self._claim_batch or len(leases) >= self._claim_batch
                if len(partitions) > 1:
                    # A partition with nothing due is looked at less often, up to QUIET_MAX_S (webhooks that start
                    # at once are leased by the step that owes them; what waits here waited seconds already).
                    if staged or leases:
                        self._quiet.pop(partition.index, None)
                    else:
                        wait_s = min(QUIET_MAX_S, 2 * (quiet[1] if quiet is not None else self._poll_interval_s / 2))
                        self._quiet[partition.index] = (now + wait_s, wait_s)
            if busy:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(self._poll_interval_s)
