"""Dead letters: events whose webhook could not be delivered, kept for operators to replay."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from schemas.events import Event


class DeadLetterReason(enum.Enum):
    RETRIES_EXHAUSTED = "retries_exhausted"
    ENDPOINT_GONE = "endpoint_gone"
    FORBIDDEN_ADDRESS = "forbidden_address"


class DeadLetter(msgspec.Struct):
    id: str
    tenant: str
    task_id: str
    event: Event
    url: str
    reason: DeadLetterReason
    attempts: int
    last_status_code: int | None
    last_error: str | None
    first_attempt_at: datetime
    dead_at: datetime
    replays: int = 0


class DeadLetterPage(msgspec.Struct):
    items: list[DeadLetter]
    next_cursor: str | None


class ReplayFilter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Said every time: an empty body must not replay every dead letter there is.
    dry_run: bool
    reason: DeadLetterReason | None = None
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class ReplayOne(msgspec.Struct):
    replayed: int


class ReplayResult(msgspec.Struct):
    matched: int
    replayed: int
