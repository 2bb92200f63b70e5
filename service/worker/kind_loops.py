"""The event loops that run task kinds' code, apart from the loop that runs Relay's own work.

A worker process has two sides. Relay's own machinery (Redis writes, lease renewal, the sweeper, the broker
heartbeat, the delivery engine, and each run's bookkeeping around its kind) stays on the loop that Dramatiq's
AsyncIO middleware starts, where the runtime is built. Kinds' code runs on loops of its own, each in a thread
of its own (:class:`KindLoop`). That way round because a kind's loop is the one that may have to be given up:
an ``async def`` kind that calls ``time.sleep(20)`` holds its loop for 20 s, and neither the lease of its run
nor the sweeper nor another tenant's task may wait for it. Dramatiq has one AsyncIO loop per process and no
way to replace it; our own loops can be set aside and replaced.

A watchdog on the machinery loop asks each kind loop to answer every :data:`WATCH_INTERVAL_S`. A loop silent
for :data:`STALL_S` is held by a kind: it is logged (WARNING, with the task that held it, found in the loop
thread's stack) and set aside; runs that it has not started yet move to another loop, and new runs go there
too (runs it had started wait for it). When the held loop answers again it is logged with how long it was
held, and it takes runs again. A process whose loops are all held, that may not start another
(:data:`MAX_KIND_LOOPS`), stops itself once the last of them has been held :data:`RESTART_AFTER_S`, so that
its supervisor starts it afresh (its runs given back): blocked code in a thread cannot be stopped otherwise.

The machinery enforces a kind's time limit from its own side (see :mod:`service.worker.actor`): a
cancellation cannot interrupt ``time.sleep``, but the run's end need not wait for the kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from delivery import background

log = logging.getLogger("relay.worker")

# How often the watchdog asks each kind loop to answer.
WATCH_INTERVAL_S = 0.1
# A kind loop that has not answered for this long is held by a kind: set aside, and logged.
STALL_S = 0.5
# While a loop stays held, it is logged again this often.
STALL_LOG_EVERY_S = 10.0
# The most kind loops (threads) one process keeps; a process whose loops have all been held for
# RESTART_AFTER_S restarts.
MAX_KIND_LOOPS = 8
RESTART_AFTER_S = 5.0


class RunState(enum.Enum):
    WAITING = "waiting"  # handed to a loop that has not started it yet
    STARTED = "started"  # its coroutine is a task on its loop
    CANCELLED = "cancelled"  # cancelled before it started: it never will


async def _held_by(task_id: str, work: Coroutine[Any, Any, Any]) -> Any:
    """Run ``work``; this frame in a loop thread's stack names the task whose code holds the loop."""
    try:
        return await work
    except (SystemExit, KeyboardInterrupt) as exc:  # would end the loop's thread: the task's failure instead
        raise RuntimeError(f"the kind raised {type(exc).__name__}") from exc


_HELD_BY_CODE = _held_by.__code__
_handed = itertools.count()


class KindRun:
    """A kind's coroutine on a kind loop, seen from the machinery loop.

    ``outcome`` (a future of the machinery loop) ends with the kind's result, its exception, or cancelled,
    once the kind's code has really ended (its ``finally`` has run). :meth:`cancel` may be called at any time.
    """

    def __init__(self, task_id: str, work: Callable[[], Coroutine[Any, Any, Any]], home: asyncio.AbstractEventLoop):
        self.task_id = task_id
        self.order = next(_handed)  # runs move between loops in the order they came
        self.outcome: asyncio.Future[Any] = home.create_future()
        self.loop: KindLoop | None = None
        self._work = work
        self._home = home
        self._lock = threading.Lock()
        self._state = RunState.WAITING
        self._task: asyncio.Task[Any] | None = None

    @property
    def started(self) -> bool:
        return self._state is RunState.STARTED

    def hand_to(self, loop: KindLoop) -> bool:
        """Start on ``loop`` unless it has started elsewhere (or been cancelled); True when handed over."""
        with self._lock:
            if self._state is not RunState.WAITING:
                return False
            if self.loop is not None:
                self.loop.runs.discard(self)
            self.loop = loop
            loop.runs.add(self)
        loop.loop.call_soon_threadsafe(self._start, loop)
        return True

    def _start(self, loop: KindLoop) -> None:
        """On the kind loop: queue the run's first step, unless it moved to another loop or was cancelled."""
        with self._lock:
            if self._state is not RunState.WAITING or self.loop is not loop:
                return
        loop.loop.create_task(self._begin(loop), name=f"relay-kind-{self.task_id}")

    async def _begin(self, loop: KindLoop) -> Any:
        """The run's first step, on the kind loop: only now has it started. Runs handed over together all wait for
        their first step behind the one that runs first; if that one blocks the loop, the others have not started
        and move to another loop, and this step, when the held loop finally gets to it, does nothing."""
        with self._lock:
            if self._state is not RunState.WAITING or self.loop is not loop:
                return None
            self._state = RunState.STARTED
            self._task = task = asyncio.current_task()
        assert task is not None
        # The end is told to the machinery loop as the kind's code returns, not from a done callback, which would
        # wait on this loop behind whatever runs next on it.
        try:
            result = await _held_by(self.task_id, self._work())
        except asyncio.CancelledError:
            self._ended(cancelled=True)
            raise
        except BaseException as exc:  # noqa: BLE001 (whatever the kind raised is its run's outcome)
            self._ended(exc=exc)
            return None
        self._ended(result=result)
        return None

    def _ended(self, *, cancelled: bool = False, exc: BaseException | None = None, result: Any = None) -> None:
        if self.loop is not None:
            self.loop.runs.discard(self)
        self._home.call_soon_threadsafe(self._settle, cancelled, exc, result)

    def _settle(self, cancelled: bool, exc: BaseException | None, result: Any) -> None:
        if self.outcome.done():  # given up already (see :meth:`give_up`): what it raised or returned is dropped
            return
        if cancelled:
            self.outcome.cancel()
        elif exc is not None:
            self.outcome.set_exception(exc)
        else:
            self.outcome.set_result(result)

    def cancel(self) -> None:
        """Cancel the kind's code (asyncio cancellation: its ``finally`` runs); a run not started never starts."""
        with self._lock:
            if self._state is RunState.WAITING:
                self._state = RunState.CANCELLED
                if self.loop is not None:
                    self.loop.runs.discard(self)
                if not self.outcome.done():
                    self.outcome.cancel()
                return
            task, loop = self._task, self.loop
        if task is not None and loop is not None:
            loop.loop.call_soon_threadsafe(task.cancel)

    def give_up(self) -> None:
        """The run ends without waiting for the kind's code, which does not stop (it holds its loop); what it
        returns when it finally does is dropped. It stays cancelled."""
        self.cancel()
        if not self.outcome.done():
            self.outcome.cancel()


class KindLoop:
    """An event loop in a thread of its own that runs kinds' coroutines."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.runs: set[KindRun] = set()
        self.held_since: float | None = None  # when it stopped answering (None: it answers)
        self.held_by = ""  # the tasks found holding it then
        self.logged_at = 0.0
        self.ping_sent_at: float | None = None
        self.looks_since_ping = 0
        ready = threading.Event()
        loop_box: list[asyncio.AbstractEventLoop] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop_box.append(loop)
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        # A daemon thread: a kind blocked for good must not keep the process from exiting.
        self.thread = threading.Thread(target=serve, name=f"relay-kind-loop-{index}", daemon=True)
        self.thread.start()
        ready.wait()
        self.loop = loop_box[0]

    def ping(self, now: float) -> float:
        """Ask the loop to answer; how long the last question has waited (0 when answered)."""
        if self.ping_sent_at is None:
            self.ping_sent_at = now
            self.looks_since_ping = 0
            self.loop.call_soon_threadsafe(self._pong)
            return 0.0
        self.looks_since_ping += 1
        return now - self.ping_sent_at

    def _pong(self) -> None:
        self.ping_sent_at = None

    def holders(self) -> list[str]:
        """The task whose code the loop thread runs now (found in its stack), else every task on the loop."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        held: list[str] = []
        while frame is not None:
            if frame.f_code is _HELD_BY_CODE:
                held.append(str(frame.f_locals.get("task_id")))
            frame = frame.f_back
        return held or sorted(run.task_id for run in list(self.runs) if run.started)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=1.0)


class KindLoops:
    """The kind loops of one process: where each run goes, and the watchdog that sets held loops aside."""

    def __init__(self, *, max_loops: int = MAX_KIND_LOOPS, on_exhausted: Callable[[], None] | None = None) -> None:
        self._max_loops = max_loops
        self._loops: list[KindLoop] = []
        self._current: KindLoop | None = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._on_exhausted = on_exhausted or _restart_process
        self._exhausted = False

    def start(self) -> None:
        """Start the first loop and the watchdog (on the machinery loop)."""
        self._home = asyncio.get_running_loop()
        self._current = self._new_loop()
        self._watchdog = asyncio.create_task(self._watch(), name="relay-kind-loop-watchdog")

    async def stop(self) -> None:
        await background.stop(self._watchdog)
        for loop in self._loops:
            if loop.held_since is None:
                await asyncio.to_thread(loop.stop)
        self._loops = []

    def run(self, task_id: str, work: Callable[[], Coroutine[Any, Any, Any]]) -> KindRun:
        """Start ``work()`` (a kind's coroutine) on a kind loop that answers; called on the machinery loop."""
        assert self._home is not None, "KindLoops.start() first"
        assert self._current is not None
        kind_run = KindRun(task_id, work, self._home)
        kind_run.hand_to(self._current)
        return kind_run

    def _new_loop(self) -> KindLoop:
        loop = KindLoop(len(self._loops))
        self._loops.append(loop)
        return loop

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            self.look(time.monotonic())

    def look(self, now: float) -> None:
        """One look at every loop: log and set aside those held, take back those that answer again."""
        for loop in self._loops:
            waited_s = loop.ping(now)
            # Held only if the watchdog itself looked on time meanwhile: a whole process that the machine did not
            # run for a while (a loaded host) finds every ping late, and its loops answer at once.
            if waited_s < STALL_S or loop.looks_since_ping < STALL_S / WATCH_INTERVAL_S / 2:
                if loop.held_since is not None:
                    log.warning(
                        "kind loop %d answers again after being held for %.1f s by task %s (blocking code in an "
                        "async kind: run blocking calls with asyncio.to_thread, or make the kind a plain function)",
                        loop.index,
                        now - loop.held_since,
                        loop.held_by,
                    )
                    loop.held_since = None
                continue
            if loop.held_since is None:
                loop.held_since = loop.ping_sent_at or now
                loop.logged_at = now
                loop.held_by = ", ".join(loop.holders()) or "(none found)"
                log.warning(
                    "kind loop %d has been held for %.1f s by task %s (blocking code in an async kind); new runs, "
                    "and those it has not started, go to another loop",
                    loop.index,
                    waited_s,
                    loop.held_by,
                )
            elif now - loop.logged_at >= STALL_LOG_EVERY_S:
                loop.logged_at = now
                log.warning(
                    "kind loop %d is still held, for %.1f s now, by task %s",
                    loop.index,
                    waited_s,
                    ", ".join(loop.holders()) or "(none found)",
                )
        # Every held loop with runs it has not started gives them up (the current one also its place as current).
        for loop in self._loops:
            if loop.held_since is not None and (loop is self._current or any(not r.started for r in list(loop.runs))):
                self._move_off(loop, now)

    def _move_off(self, held: KindLoop, now: float) -> None:
        """Make a loop that answers the current one, and move the runs that ``held`` has not started to loops that
        answer, one each while there are loops to be had: they came in together with the run that holds ``held``
        (a burst of one tenant's work), and any of them may block as it did; a run behind another on one loop
        waits for it."""
        pending = sorted((run for run in list(held.runs) if not run.started), key=lambda run: run.order)
        spares = [loop for loop in self._loops if loop.held_since is None]
        while len(spares) < len(pending) and len(self._loops) < self._max_loops:
            spares.append(self._new_loop())
        if not spares:
            if len(self._loops) >= self._max_loops:
                newest_hold_s = min(now - (loop.held_since or now) for loop in self._loops)
                if newest_hold_s >= RESTART_AFTER_S and not self._exhausted:
                    self._exhausted = True
                    log.error(
                        "all %d kind loops have been held by blocking kinds for %.1f s or more; stopping this "
                        "worker process so that it starts afresh (its runs are given back)",
                        len(self._loops),
                        newest_hold_s,
                    )
                    self._on_exhausted()
                return
            spares.append(self._new_loop())
        self._current = spares[0]
        for n, kind_run in enumerate(pending):
            kind_run.hand_to(spares[n % len(spares)])


def _restart_process() -> None:
    """A clean stop of this worker process (see :mod:`service.worker.process`); its supervisor starts it again."""
    os.kill(os.getpid(), signal.SIGTERM)
