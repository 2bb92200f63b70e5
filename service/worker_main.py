"""The module ``relay worker`` hands to Dramatiq's CLI: it builds the broker and declares the actor.

Dramatiq imports it in every worker process, so the settings come from the environment here.
"""

from __future__ import annotations

import asyncio

import dramatiq
import uvloop
from dramatiq.middleware import AsyncIO

from service.broker import ACTOR, ACTOR_TIME_LIMIT_MS, QUEUE, create_broker
from service.settings import Settings
from service.worker import RuntimeMiddleware, run_task

# The actor and the delivery engine share the event loop that the AsyncIO middleware creates: make it uvloop,
# which cuts the loop's own share of a worker's CPU (measured with scripts/bench --profile).
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

settings = Settings.from_env()
broker = create_broker(settings)
broker.add_middleware(AsyncIO())
broker.add_middleware(RuntimeMiddleware(settings))
dramatiq.set_broker(broker)

# No Dramatiq retries: a run that fails for Redis's or the broker's sake is brought back by the task ledger's
# sweeper (Dramatiq's own retry is lost when Redis is down as it re-enqueues, and the message with it).
run_task_actor = dramatiq.actor(
    actor_name=ACTOR, queue_name=QUEUE, broker=broker, max_retries=0, time_limit=ACTOR_TIME_LIMIT_MS
)(run_task)
