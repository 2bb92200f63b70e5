"""Delivery attempts, on either channel."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec


class Channel(enum.Enum):
    WEBSOCKET = "websocket"
    WEBHOOK = "webhook"


class DeliveryOutcome(enum.Enum):
    DELIVERED = "delivered"
    ACKED = "acked"
    FAILED = "failed"
    UNACKED = "unacked"
    SKIPPED = "skipped"


class Attempt(msgspec.Struct):
    event_id: str
    channel: Channel
    attempt: int
    at: datetime
    outcome: DeliveryOutcome
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0


class AttemptList(msgspec.Struct):
    attempts: list[Attempt]
    next_cursor: str | None = None  # every attempt fits one page
