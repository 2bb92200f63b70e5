"""``relay worker``: worker processes (:mod:`service.worker.process`), each started again when it dies.

A worker process that exits unexpectedly (a SIGKILL, the out-of-memory killer) is started again on its own
after a backoff that doubles while it keeps dying young; the others go on. One that cannot start (bad settings
or task modules) stops them all. The first SIGTERM or SIGINT passes one SIGTERM to every process (a clean,
bounded stop, see :mod:`service.worker.process`); a second one kills them at once (a second SIGTERM only when it
comes ``SAME_STOP_S`` or more after the first: sooner, it is the same stop told twice). The tasks a dead process
held are not lost either way: their leases run out and the sweeper enqueues them again.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from service.worker.process import EXIT_CANNOT_START, LOG_FORMAT, StopSignals

log = logging.getLogger("relay.worker")

# The wait before a restart doubles from FIRST_BACKOFF_S to MAX_BACKOFF_S while a process keeps dying young.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# A run that lasted this long was healthy: the next restart waits FIRST_BACKOFF_S again.
HEALTHY_AFTER_S = 60.0
POLL_S = 0.05


@dataclass
class Slot:
    """One worker process and when it may be started again."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float = field(default=0.0)


def supervise(processes: int, threads: int) -> int:
    """Run ``processes`` worker processes of ``threads`` threads until asked to stop; return the exit code."""
    argv = [sys.executable, "-m", "service.worker.process", "--threads", str(threads)]
    stops = StopSignals()  # as in each worker process: the group's SIGTERM and the supervisor's own are one stop

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stops.note(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    slots = [Slot(index=i) for i in range(processes)]
    code = 0
    while not stops.count:
        now = time.monotonic()
        for slot in slots:
            if slot.process is None:
                if now >= slot.restart_at:
                    slot.process = subprocess.Popen(argv)
                    slot.started_at = now
                continue
            exit_code = slot.process.poll()
            if exit_code is None:
                continue
            slot.process = None
            if exit_code == EXIT_CANNOT_START:
                log.error("worker process %d cannot start; stopping the others", slot.index)
                code = exit_code
                stops.count = 1
                break
            if now - slot.started_at > HEALTHY_AFTER_S:
                slot.backoff_s = FIRST_BACKOFF_S
            log.error(
                "worker process %d exited (code %d); starting it again in %.1f s", slot.index, exit_code, slot.backoff_s
            )
            slot.restart_at = now + slot.backoff_s
            slot.backoff_s = min(slot.backoff_s * 2, MAX_BACKOFF_S)
        time.sleep(POLL_S)
    _stop([slot.process for slot in slots if slot.process is not None], lambda: stops.count > 1)
    return code


def _stop(running: list[subprocess.Popen[bytes]], forced: Callable[[], bool]) -> None:
    """One SIGTERM to each process, then wait for them all; SIGKILL the rest once ``forced()`` says so."""
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    killed = False
    while any(process.poll() is None for process in running):
        if not killed and forced():
            log.warning("killing the worker processes (a second signal)")
            for process in running:
                if process.poll() is None:
                    process.kill()
            killed = True
        time.sleep(POLL_S)


def main(processes: int, threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    sys.exit(supervise(processes, threads))
