"""What the delivery engine stores about work in flight (not part of the wire contract)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from delivery import keys, metrics
from schemas.events import Event

log = logging.getLogger("relay.records")

T = TypeVar("T")

# What decoding a stored record raises when it cannot be read: deep nesting exhausts the recursion limit.
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


# A "tenant" member, as Relay's encoder writes it (whitespace allowed for records written by hand).
_TENANT = re.compile(rb'"tenant"\s*:\s*"((?:[^"\\]|\\.)*)"')


def decode_or_skip(decode: Callable[[bytes | str], T], raw: bytes | str, *, key: str) -> T | None:
    """``decode(raw)``, or None (with a log line) when the record cannot be read; callers count what they skip."""
    try:
        return decode(raw)
    except DECODE_ERRORS as exc:
        log.error("skipped the unreadable record %s (%s)", key, type(exc).__name__)
        return None


def owner_of(raw: bytes | str, *, last: bool = False) -> str | None:
    """The tenant of a record that cannot be decoded, found in its text rather than by a decoder (which would fail
    the same way). Records are encoded in field order: a dead letter's tenant is its first ``tenant`` member
    (before any tenant data), a task record's its last one (after the input)."""
    data = raw.encode() if isinstance(raw, str) else raw
    matches = list(_TENANT.finditer(data)) if last else [m for m in [_TENANT.search(data)] if m]
    if not matches:
        return None
    try:
        return str(msgspec.json.decode(b'"' + matches[-1].group(1) + b'"'))
    except DECODE_ERRORS:
        return None


async def count_unreadable(redis: aioredis.Redis, count: int) -> None:
    """Add ``count`` to the unreadable-records counter of ``/metrics`` (best effort: the log has each one)."""
    if count:
        try:
            await redis.hincrby(keys.partitions()[0].stats, metrics.UNREADABLE_RECORDS, count)
        except (RedisError, OSError) as exc:
            log.warning("counting %d unreadable records failed: %s", count, exc)


async def get_many(redis: aioredis.Redis, names: Sequence[str]) -> list[Any]:
    """The values of ``names``, in order: one MGET on a store of one partition; else GETs in one pipeline, which a
    cluster client splits by node (an MGET across slots is refused)."""
    if not names:
        return []
    if keys.layout().single:
        return list(await redis.mget(names))
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(name)
        return list(await pipe.execute())


class PendingDelivery(msgspec.Struct, kw_only=True):
    """A webhook that is owed: stored under ``relay:dlv:{event_id}`` while it is in ``relay:due``."""

    tenant: str
    task_id: str
    url: str | None  # None for a WebSocket-only task
    event: Event
    attempts: int = 0  # webhook attempts made for this event so far, across replays
    run_attempts: int = 0  # attempts in the current run (a replay starts a new run)
    first_attempt_at: datetime | None = None
    dead_letter_id: str | None = None  # set while a replay of this dead letter is in flight
    replays: int = 0
    last_status_code: int | None = None
    last_error: str | None = None

    @property
    def event_id(self) -> str:
        return self.event.id


class SecretEntry(msgspec.Struct):
    """One signing secret of a tenant; ``expires_at`` (unix s) is set once a newer secret replaced it."""

    secret: str
    created_at: float
    expires_at: float | None = None
