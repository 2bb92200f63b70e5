"""What the delivery engine stores about work in flight (not part of the wire contract)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.events import Event


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
