"""WebSocket frames of ``/v1/ws`` (JSON text frames, tagged by ``type``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.api import MAX_ID_CHARS
from schemas.events import Event
from schemas.tasks import TaskStatus

TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
# The highest seq a client may name: far above any task's events, and within what Redis takes as an index.
MAX_SEQ = 2**53
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


# Client to server.


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", forbid_unknown_fields=True):
    task_id: TaskId
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    after_seq: Seq = 0


class Ack(msgspec.Struct, tag="ack", tag_field="type", forbid_unknown_fields=True):
    event_id: EventId


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", forbid_unknown_fields=True):
    task_id: TaskId


class Pong(msgspec.Struct, tag="pong", tag_field="type", forbid_unknown_fields=True):
    pass


ClientFrame = Subscribe | Ack | Unsubscribe | Pong


# Server to client.


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="type"):
    task_id: str
    status: TaskStatus
    last_seq: int
    recovered: bool


class EventFrame(msgspec.Struct, tag="event", tag_field="type"):
    event: Event


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class Error(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str
    task_id: str | None = None


ServerFrame = Subscribed | EventFrame | Ping | Error
