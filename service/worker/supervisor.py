"""``relay worker``: Dramatiq's worker processes, started again when one of them dies.

Dramatiq's own main process shuts every worker down and exits when one worker process dies (a SIGKILL, the
out-of-memory killer). ``relay worker`` runs Dramatiq under a small supervisor instead: an unexpected exit
starts Dramatiq again after a backoff, while SIGTERM or SIGINT stops it for good. The tasks the dead process
held are not lost either way: their leases run out and the sweeper enqueues them again.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger("relay.worker")

# Dramatiq's exit codes that no restart can mend: bad arguments or modules that do not import.
DRAMATIQ_RET_IMPORT = 2
# The wait before a restart doubles from FIRST_BACKOFF_S to MAX_BACKOFF_S while Dramatiq keeps dying young.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# A run that lasted this long was healthy: the next restart waits FIRST_BACKOFF_S again.
HEALTHY_AFTER_S = 60.0


def supervise(argv: Sequence[str]) -> int:
    """Run ``argv`` (Dramatiq's command line) until it is asked to stop; return its last exit code."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return  # a second SIGTERM makes Dramatiq exit mid-shutdown: pass on only the first
        stopping = True
        # Ctrl-C reaches the whole process group, Dramatiq included: only SIGTERM is passed on.
        if signum == signal.SIGTERM and child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    backoff_s = FIRST_BACKOFF_S
    while True:
        started = time.monotonic()
        child = subprocess.Popen(list(argv))
        code = child.wait()
        if stopping:
            return code
        if code == DRAMATIQ_RET_IMPORT:
            log.error("the worker cannot start (exit code %d); not starting it again", code)
            return code
        if time.monotonic() - started > HEALTHY_AFTER_S:
            backoff_s = FIRST_BACKOFF_S
        log.error("the worker processes exited (code %d); starting them again in %.1f s", code, backoff_s)
        deadline = time.monotonic() + backoff_s
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)


def main(argv: Sequence[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(supervise(argv))
