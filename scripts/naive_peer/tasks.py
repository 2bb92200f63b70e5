"""The peer's Dramatiq broker and actors: run a task, then POST its webhook.

``dramatiq scripts.naive_peer.tasks`` runs them; the API imports this module to send the first message.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dramatiq
import httpx
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from delivery.signing import webhook_headers
from scripts.naive_peer.wire import Event, Task

REDIS_URL = os.environ["PEER_REDIS_URL"]
SIGNING_SECRET = os.environ["PEER_SIGNING_SECRET"]
USER_AGENT = "naive-peer/0.1"
# How long a task's record is kept, seconds.
TASK_TTL_S = 86_400
# Seconds per webhook request (Relay's default webhook timeout).
WEBHOOK_TIMEOUT_S = 15.0

KINDS: dict[str, Callable[[Any], Any]] = {"echo": lambda data: data}

broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)

store = redis.Redis.from_url(REDIS_URL)
http = httpx.Client(timeout=WEBHOOK_TIMEOUT_S)
# httpx logs a line per request at INFO, the level the dramatiq CLI logs at; Relay's worker quiets it too.
logging.getLogger("httpx").setLevel(logging.WARNING)


def task_key(task_id: str) -> str:
    return f"task:{task_id}"


@dramatiq.actor
def run_task(task_id: str) -> None:
    """Run the task's kind, store its result and send its webhook, if it has one."""
    raw = store.get(task_key(task_id))
    if raw is None:
        return  # expired
    task = msgspec.json.decode(raw, type=Task)
    task.result = KINDS[task.kind](task.input)
    task.status = "succeeded"
    store.set(task_key(task_id), msgspec.json.encode(task), ex=TASK_TTL_S)
    if task.webhook is not None:
        event = Event(
            id=f"evt_{uuid.uuid4().hex}",
            type="task.completed",
            task_id=task.id,
            seq=1,
            created_at=datetime.now(UTC),
            data={"status": task.status, "result": task.result},
        )
        deliver_webhook.send(task.webhook.url, event.id, msgspec.json.encode(event).decode())


@dramatiq.actor
def deliver_webhook(url: str, event_id: str, body: str) -> None:
    """POST one event; anything but a 2xx raises, and Dramatiq's Retries middleware tries again later."""
    content = body.encode()
    headers = webhook_headers([SIGNING_SECRET], event_id, int(time.time()), content, user_agent=USER_AGENT)
    response = http.post(url, content=content, headers=headers)
    response.raise_for_status()
