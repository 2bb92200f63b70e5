"""Events: what happened to a task. The same Event is the webhook body and the WebSocket payload."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec


class EventType(enum.Enum):
    PROGRESS = "task.progress"
    COMPLETED = "task.completed"
    FAILED = "task.failed"
    CANCELLED = "task.cancelled"
    RETRYING = "task.retrying"  # a failed attempt whose work is tried again

    @property
    def final(self) -> bool:
        """The task's last event: it has ended."""
        return self not in (EventType.PROGRESS, EventType.RETRYING)


class Event(msgspec.Struct):
    id: str
    type: EventType
    task_id: str
    seq: int
    created_at: datetime
    data: Any


class EventList(msgspec.Struct):
    """One page of a task's events, oldest first."""

    events: list[Event]
    next_after_seq: int | None = None  # the after_seq of the next page; None on the last page
