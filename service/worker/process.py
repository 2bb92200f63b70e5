"""One worker process: Dramatiq's ``Worker`` on the broker that :func:`service.worker.setup.setup` builds.

``relay worker`` starts several of these under its supervisor (:mod:`service.worker.supervisor`) rather than
under Dramatiq's own command line, so that a stop is bounded and fast:

- SIGTERM starts a clean stop. Runs in flight get :data:`service.worker.runtime.SHUTDOWN_GRACE_S` to end;
  those still running then are cancelled and given back to the task ledger, owed at once, so that the next
  worker to sweep (or this one after a restart) runs them again. An idle process is gone in well under 2 s.
- A second SIGTERM, or a stop that takes longer than :data:`HARD_STOP_S`, ends the process at once; what it
  held comes back when its leases run out.
- SIGINT is ignored: Ctrl-C in a terminal reaches the supervisor, which passes on one SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

import dramatiq
from dramatiq.errors import BrokerConnectionError
from dramatiq.worker import Worker

from delivery.errors import ConfigError
from service.broker import QUEUE
from service.worker.setup import setup

log = logging.getLogger("relay.worker")

# Exit codes: the process cannot start (bad settings or task modules: a restart cannot help it), the broker
# is unreachable at start, and a stop that had to be forced.
EXIT_CANNOT_START = 2
EXIT_NO_BROKER = 3
EXIT_FORCED = 4
# How long a worker thread waits for a message before it looks whether it should stop (Dramatiq's default is
# 1 s, which a stop waits out twice: once in the worker threads, once in the consumer).
POLL_MS = 100
# Past this long after SIGTERM the process exits whatever is still running.
HARD_STOP_S = 12.0
# A SIGTERM this soon after the first is the same stop, not a second one that forces the exit: systemd (and a shell
# stopping a job) sends it to every process of the group, and the supervisor then passes its own on to each worker.
SAME_STOP_S = 2.0
# How often the main thread looks whether a SIGTERM came.
STOP_POLL_S = 0.1
LOG_FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"


class StopSignals:
    """The stops asked for by signal, counted as a person means them: a SIGTERM within ``SAME_STOP_S`` of the first
    signal is the same stop told twice (systemd and a shell send it to the whole process group, and the supervisor
    passes its own on to each worker process); any other signal, a second Ctrl-C above all, is one more.

    Only a counter and a time, so that it is safe in a signal handler: a lock taken there (an Event's, a Timer's) can
    be the one the main thread holds at that moment, and the process would hang.
    """

    def __init__(self) -> None:
        self.count = 0
        self._first_at = 0.0

    def note(self, signum: int) -> int:
        """Count ``signum`` (unless it repeats the first stop); the stops asked for so far."""
        now = time.monotonic()
        if not (signum == signal.SIGTERM and self.count and now - self._first_at < SAME_STOP_S):
            self.count += 1
            self._first_at = self._first_at or now
        return self.count


def run(threads: int) -> int:
    stops = StopSignals()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if stops.note(signum) > 1:
            os._exit(EXIT_FORCED)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    try:
        setup()
    except (ConfigError, ImportError) as exc:
        log.error("the worker cannot start: %s", exc)
        return EXIT_CANNOT_START
    broker = dramatiq.get_broker()
    broker.emit_after("process_boot")
    worker = Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=POLL_MS)
    try:
        worker.start()
    except BrokerConnectionError as exc:
        log.error("the broker cannot be reached: %s", exc)
        return EXIT_NO_BROKER
    # The line the supervisor, the tests and the benchmark wait for.
    log.info("Worker process is ready for action.")
    while not stops.count:
        time.sleep(STOP_POLL_S)
    watchdog = threading.Timer(HARD_STOP_S, _force_exit)
    watchdog.daemon = True
    watchdog.start()
    log.info("stopping")
    worker.stop(timeout=int(HARD_STOP_S * 1000))
    broker.close()
    log.info("stopped")
    return 0


def _force_exit() -> None:
    log.error("the worker did not stop within %g s; exiting with its runs still held", HARD_STOP_S)
    logging.shutdown()
    os._exit(EXIT_FORCED)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relay-worker-process", description=__doc__)
    parser.add_argument("--threads", type=int, default=16, help="tasks at once in this process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    sys.exit(run(args.threads))


if __name__ == "__main__":
    main()
