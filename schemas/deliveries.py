"""Delivery attempts, on either channel."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from schemas.dead_letters import DeadLetterReason


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


class StepKind(enum.Enum):
    DEAD_LETTERED = "dead_lettered"  # the webhook became a dead letter
    REPLAYED = "replayed"  # the dead letter was sent again (it leaves the store once delivered)


class DeliveryStep(msgspec.Struct):
    """A step of a webhook's delivery that is not an attempt: it was dead-lettered, or its dead letter replayed.

    Kept beside the attempts rather than among them: an Attempt's outcome says what one try to deliver brought,
    and clients read that set of outcomes as complete.
    """

    event_id: str
    step: StepKind
    at: datetime
    dead_letter_id: str
    reason: DeadLetterReason | None = None  # why it was (or had been) dead-lettered


class AttemptList(msgspec.Struct):
    attempts: list[Attempt]
    next_cursor: str | None = None  # every attempt fits one page
    # Dead-lettered and replayed steps of the task's webhooks, oldest first (interleave them with the attempts by
    # their time for a timeline).
    steps: list[DeliveryStep] = msgspec.field(default_factory=list)
