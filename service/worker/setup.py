"""A worker process's broker and actor, built by :func:`setup` (``service.worker.setup:setup``).

Every worker process calls it once at start, so importing this module builds nothing; the settings are read
from the environment then. Dramatiq's own command line takes the same callable
(``dramatiq service.worker.setup:setup``).
"""

from __future__ import annotations

import asyncio

import dramatiq
import uvloop
from dramatiq.middleware import AsyncIO

from service.broker import ACTOR, ACTOR_TIME_LIMIT_MS, QUEUE, create_broker
from service.settings import Settings
from service.worker.actor import take_message
from service.worker.runtime import RuntimeMiddleware


def setup() -> None:
    """Build the broker from the environment's settings, make it Dramatiq's, and declare the actor on it."""
    # The runs' bookkeeping, the periodic jobs and the delivery engine share the event loop that the AsyncIO
    # middleware creates, and kinds run on kind loops of their own (service.worker.kind_loops): make them all
    # uvloop, which cuts a loop's own share of a worker's CPU (measured with scripts/bench --profile).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    settings = Settings.from_env()
    broker = create_broker(settings)
    broker.add_middleware(AsyncIO())
    broker.add_middleware(RuntimeMiddleware(settings))
    dramatiq.set_broker(broker)
    # No Dramatiq retries: a run that fails for Redis's or the broker's sake is brought back by the task
    # ledger's sweeper (Dramatiq's own retry is lost when Redis is down as it re-enqueues, and the message
    # with it).
    dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker, max_retries=0, time_limit=ACTOR_TIME_LIMIT_MS)(
        take_message
    )
