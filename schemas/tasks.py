"""Tasks: what a client submits and what it reads back."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from schemas.events import EventType

# The furthest ahead a task may be scheduled.
MAX_SCHEDULE_AHEAD_S = 30 * 86400


class TaskStatus(enum.Enum):
    SCHEDULED = "scheduled"  # waiting for its run_at
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """The task has ended: it runs no more."""
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


# The events a webhook gets unless it lists its own.
FINAL_EVENT_TYPES = (EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED)


class Webhook(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: str
    # The event types posted to it (None: the final types); a task's webhooks go in seq order.
    events: Annotated[list[EventType], Meta(min_length=1, max_length=16)] | None = None

    def wants(self, event_type: EventType) -> bool:
        return event_type in (FINAL_EVENT_TYPES if self.events is None else self.events)

    def resolved(self) -> Webhook:
        """The same webhook with its event types spelled out, each once, in the order they are declared."""
        wanted = FINAL_EVENT_TYPES if self.events is None else self.events
        return Webhook(url=self.url, events=[t for t in EventType if t in wanted])


class TaskSubmission(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    input: Any = None
    webhook: Webhook | None = None
    websocket: bool = False
    run_at: datetime | None = None  # start no earlier than this (RFC 3339) ...
    delay_s: Annotated[float, Meta(ge=0, le=MAX_SCHEDULE_AHEAD_S)] | None = None  # ... or this many seconds on


class TaskError(msgspec.Struct):
    type: str
    message: str


class Progress(msgspec.Struct):
    percent: float
    message: str | None = None


class Task(msgspec.Struct, omit_defaults=False):
    id: str
    kind: str
    status: TaskStatus
    input: Any
    created_at: datetime
    result: Any = None
    error: TaskError | None = None
    progress: Progress | None = None
    webhook: Webhook | None = None
    websocket: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ws_token: str | None = None
    run_at: datetime | None = None
    attempt: int = 1  # raised by each retry of the work


class TaskPage(msgspec.Struct):
    items: list[Task]
    next_cursor: str | None


class TaskRecord(Task, kw_only=True):
    """A task as stored: the public fields plus what only Relay reads."""

    tenant: str
    last_seq: int = 0
    lost_runs: int = 0  # runs lost to a fault (a worker that stopped or died mid-run); each also raised `attempt`
    died_runs: int = 0  # of those, runs whose worker died (not given back): more than a few and the task ends

    def public(self) -> Task:
        """The task as its owner sees it."""
        fields = {f: getattr(self, f) for f in Task.__struct_fields__}
        return Task(**fields)
