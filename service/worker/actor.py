"""The ``run_task`` actor: run one task's kind to its end and hand its delivery to the delivery engine."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from delivery.errors import LeaseLost
from schemas.tasks import TaskError, TaskRecord, TaskStatus
from service.kinds import TaskContext
from service.tasks.ledger import given_back, new_run_token
from service.tasks.steps import Start
from service.worker.kind_loops import KindRun
from service.worker.result_limit import ResultLimit
from service.worker.runtime import INFRA_ERRORS, START_PATIENCE_S, Run, Runtime, Stopping, runtime

log = logging.getLogger("relay.worker")
# A kind's error message is kept to this many characters (its start says what went wrong).
MAX_ERROR_CHARS = 2000

# A task still running after this long is marked `running` (shorter ones go from queued to their end).
RUNNING_AFTER_S = 0.05
# A kind's code cancelled (its time limit, a cancel, a lost lease) gets this long to end; code that is still
# running then holds its loop (blocking calls in an async kind), and the run ends without it.
CANCEL_GRACE_S = 2.0
# A task whose runs died more often than this (its worker died while running it: not a clean stop) ends failed
# rather than run again: a task that takes its worker down with it must not do so forever.
MAX_DIED_RUNS = 3


def take_message(task_id: str) -> None:
    """The ``run_task`` actor: hand the run to this process's event loop (see :meth:`Runtime.hand_over`)."""
    runtime().hand_over(run_task, task_id)


async def run_task(task_id: str) -> None:
    """Run one task to its end and hand its delivery to the delivery engine.

    Nothing escapes but a bug: a message this run cannot act on (the task ended, a live run holds it, Redis
    is away) is dropped, because the task ledger, not the message, is what brings an owed task back.
    """
    rt = runtime()
    run = Run(token=new_run_token())
    try:
        started = await rt.until_redis_answers(
            lambda: rt.ledger.start(task_id, run.token), what=f"starting task {task_id}", patience_s=START_PATIENCE_S
        )
    except (*INFRA_ERRORS, Stopping) as exc:
        log.warning("task %s not started (%s); the sweeper enqueues it again once it is overdue", task_id, exc)
        return
    if started.outcome is Start.GONE:
        log.warning("task %s is gone (expired or never stored); nothing to run", task_id)
        return
    if started.outcome is not Start.RUN or started.record is None:
        return  # a redelivered message of a task that has ended, or that a live run holds
    record = started.record
    if record.status is TaskStatus.RUNNING:
        # The record still shows a run that was lost without being given back (its worker died): this is a rerun.
        record = given_back(record, died=True)
    rt.runs[task_id] = run
    lease = None
    try:
        if record.died_runs > MAX_DIED_RUNS:
            log.warning("task %s: %d runs died; it ends failed rather than run again", task_id, record.died_runs)
            outcome: Outcome | None = Outcome(error=_runs_lost(record))
        else:
            outcome = await _execute(rt, record, run)
        if outcome is None:
            return
        run.ending = True
        if outcome.retry_in_s is not None and outcome.error is not None:
            await _retry_later(rt, record, run, outcome.error, outcome.retry_in_s)
            return
        result, error = outcome.result, outcome.error
        _, lease = await rt.until_redis_answers(
            lambda: rt.tasks.finish(record, run.token, result=result, error=error),
            what=f"recording the end of task {task_id}",
        )
    except LeaseLost as exc:
        log.info("task %s: %s; this run's outcome is dropped", task_id, exc)
        return
    except Stopping:
        log.warning("task %s ran but its end could not be written before shutdown; it will run again", task_id)
        return
    finally:
        if rt.runs.get(task_id) is run:
            del rt.runs[task_id]
    if lease is not None:
        rt.engine.dispatch(lease)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt of a kind's work ended."""

    result: Any = None
    error: TaskError | None = None
    retry_in_s: float | None = None  # the error is retried after this long


async def _retry_later(rt: Runtime, record: TaskRecord, run: Run, error: TaskError, delay_s: float) -> None:
    waiting, event = rt.tasks.retry_event(record, error=error, delay_s=delay_s)
    lease = await rt.until_redis_answers(
        lambda: rt.tasks.append_retry(waiting, run.token, event), what=f"scheduling the retry of task {record.id}"
    )
    if lease is not None:
        rt.engine.dispatch(lease)
    log.info(
        "task %s (%s): attempt %d failed (%s); attempt %d in %.3g s",
        record.id,
        record.kind,
        record.attempt,
        error.type,
        waiting.attempt,
        delay_s,
    )


def _runs_lost(record: TaskRecord) -> TaskError:
    return TaskError(
        type="RunsLost",
        message=f"the task's run died {record.died_runs} times (its worker died while running it); it is not run again",
    )


async def _execute(rt: Runtime, record: TaskRecord, run: Run) -> Outcome | None:
    """Run the kind's code once; how it ended, or None when this run lost its lease meanwhile.

    The kind runs on a kind loop (see :mod:`service.worker.kind_loops`); this side, on the machinery loop, waits
    for it, marks the task running, and enforces the time limit whether or not the kind's loop answers.
    """
    kind = rt.kinds.get(record.kind)
    if kind is None:
        return Outcome(error=TaskError(type="UnknownKind", message=f"no task kind {record.kind!r} on this worker"))
    record.started_at = record.started_at or datetime.now(UTC)
    limit = ResultLimit(rt.settings.max_result_bytes)
    home = asyncio.get_running_loop()

    async def report(percent: float, message: str | None) -> None:
        limit.check_progress(message)  # raises ResultTooLarge into the kind
        try:
            await mark_running()
            event = rt.tasks.progress_event(record, percent, message)  # one event, however often it is sent
            lease = await rt.until_redis_answers(
                lambda: rt.tasks.append_progress(record, run.token, event),
                what=f"reporting progress of task {record.id}",
            )
            if lease is not None:
                rt.engine.dispatch(lease)  # a webhook that wants progress
        except LeaseLost as exc:
            log.info("task %s: %s; its run is cancelled", record.id, exc)
            run.lose()  # the kind's next await is cancelled (a cancelled task has ended)
        except Stopping:
            run.lose()

    async def mark_running() -> None:
        if record.status in (TaskStatus.QUEUED, TaskStatus.SCHEDULED):
            await rt.until_redis_answers(
                lambda: rt.tasks.mark_running(record, run.token), what=f"marking {record.id} running"
            )

    ctx = TaskContext(task_id=record.id, report=report, loop=home, attempt=record.attempt)
    try:
        data = kind.parse_input(record.input)
    except Exception as exc:  # noqa: BLE001 (an input that no longer fits the kind fails its task)
        error, own = _error_of(exc, limit)
        return Outcome(error=error, retry_in_s=kind.retry_delay_s(_tries(record), exc) if own else None)
    work = run.work = rt.kind_loops.run(record.id, lambda: kind.run(data, ctx))
    if run.lost:  # lost while it was being handed over
        work.cancel()
    deadline = home.time() + kind.time_limit_s
    # A task that ends within RUNNING_AFTER_S goes straight from queued to its end: nobody could have seen it
    # running, and the write would cost every short task a round trip.
    if not await _ended(work, run, timeout_s=RUNNING_AFTER_S) and not run.lost:
        try:
            await mark_running()
        except (Stopping, LeaseLost):
            run.lose()
    timed_out = False
    if not await _ended(work, run, timeout_s=deadline - home.time()):
        if not run.lost:
            timed_out = True
            work.cancel()
        if not await _ended(work, None, timeout_s=CANCEL_GRACE_S):
            work.give_up()
            log.error(
                "task %s (%s): its code did not stop %g s after it was cancelled (%s): it blocks its event loop; "
                "the run ends without it",
                record.id,
                record.kind,
                CANCEL_GRACE_S,
                "its time limit" if timed_out else "the run was lost",
            )
            if not timed_out:
                return None
            error = TaskError(
                type="TimeLimitExceeded",
                message=f"the task ran longer than its {kind.time_limit_s:g} s time limit and did not stop when "
                "cancelled: its code blocks the event loop (run blocking calls with asyncio.to_thread)",
            )
            return Outcome(error=error)
    if run.lost:  # however the kind's code ended, this run is over (its task ended, or runs elsewhere)
        if not work.outcome.cancelled():
            work.outcome.exception()  # retrieved: dropped, not logged as never retrieved
        return None
    try:
        result = work.outcome.result()
        # A result that cannot be sent, or is too large to, fails here, not in the webhook.
        refused = limit.check_result(result)
        if refused is not None:
            log.info("task %s (%s) failed: %s", record.id, record.kind, refused.message)
            return Outcome(error=refused)
    except asyncio.CancelledError:
        if timed_out:
            error = TaskError(
                type="TimeLimitExceeded", message=f"the task ran longer than its {kind.time_limit_s:g} s time limit"
            )
            return Outcome(error=error, retry_in_s=kind.retry_delay_s(_tries(record), TimeoutError()))
        raise
    except Exception as exc:  # noqa: BLE001 (whatever a kind raises is its task's failure, logged with its id)
        error, own = _error_of(exc, limit)
        retry_in_s = kind.retry_delay_s(_tries(record), exc) if own else None
        if retry_in_s is None:
            log.info("task %s (%s) failed: %s: %r", record.id, record.kind, error.type, error.message[:500])
        return Outcome(error=error, retry_in_s=retry_in_s)
    return Outcome(result=result)


def _error_of(exc: Exception, limit: ResultLimit) -> tuple[TaskError, bool]:
    """The task's error for what its kind raised, and whether it is the kind's own (False: ResultTooLarge, which
    is not retried). Measured whole against RELAY_MAX_RESULT_BYTES (too large fails as a result would), then kept
    to its first MAX_ERROR_CHARS, which say what went wrong."""
    raised = TaskError(type=type(exc).__name__, message=str(exc))
    error = limit.check_error(raised)
    if error is not raised:
        return error, False
    if len(error.message) > MAX_ERROR_CHARS:
        error = TaskError(type=error.type, message=error.message[:MAX_ERROR_CHARS] + " …(cut)")
    return error, True


def _tries(record: TaskRecord) -> int:
    """The attempts that count against the kind's ``max_retries``: runs lost to faults raise ``attempt`` but are
    not the kind's failures."""
    return record.attempt - record.lost_runs


async def _ended(work: KindRun, run: Run | None, *, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the kind's code to end; False when it has not (also as soon as ``run`` is lost,
    so that the caller cancels it)."""
    if work.outcome.done():
        return True
    if timeout_s <= 0:
        return False
    waiters: set[asyncio.Future[Any]] = {work.outcome}
    if run is not None:
        if run.lost:
            return False
        run.waiter = asyncio.get_running_loop().create_future()
        waiters.add(run.waiter)
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if run is not None:
            run.waiter = None
    return work.outcome.done()
