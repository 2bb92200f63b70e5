"""The peer's HTTP API (``uvicorn scripts.naive_peer.app:app``): submit a task, read it back."""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from litestar import Litestar, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException
from litestar.handlers.base import BaseRouteHandler

from scripts.naive_peer.tasks import KINDS, REDIS_URL, SIGNING_SECRET, TASK_TTL_S, run_task, task_key
from scripts.naive_peer.wire import Accepted, Secret, Submission, Task

API_KEY = os.environ["PEER_API_KEY"]

store = aioredis.Redis.from_url(REDIS_URL)


def require_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    given = connection.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {API_KEY}".encode()):
        raise NotAuthorizedException("a valid API key is needed")


@post("/v1/tasks", status_code=202, guards=[require_key])
async def submit(data: Submission) -> Accepted:
    if data.kind not in KINDS:
        raise HTTPException(status_code=422, detail=f"unknown kind {data.kind!r}")
    task = Task(
        id=f"task_{uuid.uuid4().hex}",
        kind=data.kind,
        status="queued",
        input=data.input,
        webhook=data.webhook,
        created_at=datetime.now(UTC),
    )
    await store.set(task_key(task.id), msgspec.json.encode(task), ex=TASK_TTL_S)
    run_task.send(task.id)  # Dramatiq's send is synchronous: one quick call to a local Redis
    return Accepted(id=task.id, status=task.status)


@get("/v1/tasks/{task_id:str}", guards=[require_key])
async def read_task(task_id: str) -> Task:
    raw = await store.get(task_key(task_id))
    if raw is None:
        raise NotFoundException(f"no task {task_id!r}")
    return msgspec.json.decode(raw, type=Task)


@get("/v1/signing-secret", guards=[require_key])
async def signing_secret() -> Secret:
    return Secret(secret=SIGNING_SECRET)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def close_store() -> None:
    await store.aclose()


app = Litestar([submit, read_task, signing_secret, health], on_shutdown=[close_store])
