"""Stopping a background task for certain.

On Python 3.11 a cancellation can be lost inside redis-py's timed reads (``asyncio.wait_for`` returns the reply
that raced the cancel and drops the ``CancelledError``): a loop that goes on after that ignores one ``cancel()``
and a shutdown that awaits it hangs. ``stop`` cancels until the task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("relay")

# How long ``stop`` waits after each cancel before it cancels again, and how long in all before it gives up.
CANCEL_AGAIN_S = 0.5
DEFAULT_PATIENCE_S = 5.0


async def stop(task: asyncio.Future[Any] | None, *, patience_s: float = DEFAULT_PATIENCE_S) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it goes on (at most ``patience_s``; then
    it is left, logged). What the task raised on its way out is its own business: not raised here."""
    if task is None or task.done():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("background task %r did not stop within %g s; left running", task, patience_s)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(CANCEL_AGAIN_S, remaining))
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not log it as never retrieved
