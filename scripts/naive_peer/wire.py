"""The peer's wire types: what a client submits, what it gets back, the webhook's body."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class WebhookSpec(msgspec.Struct):
    url: str


class Submission(msgspec.Struct):
    kind: str
    input: Any = None
    webhook: WebhookSpec | None = None


class Task(msgspec.Struct):
    id: str
    kind: str
    status: str
    input: Any
    webhook: WebhookSpec | None
    created_at: datetime
    result: Any = None


class Accepted(msgspec.Struct):
    id: str
    status: str


class Secret(msgspec.Struct):
    secret: str


class Event(msgspec.Struct):
    """The webhook's body, shaped as Relay's Event so that a receiver of either reads it alike."""

    id: str
    type: str
    task_id: str
    seq: int
    created_at: datetime
    data: dict[str, Any]
