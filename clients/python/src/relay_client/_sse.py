"""A task's Server-Sent Events (``GET /v1/tasks/{id}/stream``): the lines decoded into messages, and what a stream
has handed on so far, so that a new connection resumes after it without losing or repeating an event."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from relay_client import errors
from relay_client.types import Event


@dataclass(slots=True)
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


_LINE_END = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    """Cuts a stream's bytes into lines (``\r\n``, ``\r`` or ``\n``), none longer than ``limit_bytes``: an endless
    line would otherwise be kept until memory runs out (httpx's own ``iter_lines`` has no bound)."""

    def __init__(self, task_id: str, *, limit_bytes: int) -> None:
        self._task_id = task_id
        self._limit_bytes = limit_bytes
        self._pending = bytearray()
        self._after_cr = False  # the last chunk ended with \r: a \n that starts the next one ends the same line

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 1 if self._after_cr and chunk.startswith(b"\n") else 0
        self._after_cr = False
        for end in _LINE_END.finditer(chunk, start):
            self._pending += chunk[start : end.start()]
            lines.append(self._pending.decode("utf-8", "replace"))
            self._pending.clear()
            start = end.end()
            self._after_cr = end.group() == b"\r" and start == len(chunk)
        self._pending += chunk[start:]
        if len(self._pending) > self._limit_bytes:
            raise too_long(self._task_id, "a line", self._limit_bytes)
        return lines


def too_long(task_id: str, what: str, limit_bytes: int) -> errors.UnexpectedAnswer:
    return errors.UnexpectedAnswer(
        f"the stream of task {task_id} sent {what} longer than {limit_bytes} bytes (max_answer_bytes)"
    )


class SseDecoder:
    """Turns the lines of ``text/event-stream`` (without their line ends) into messages, as the HTML standard
    says: ``field: value`` lines, ``:`` comments, a blank line ends a message. A message whose data grows past
    ``limit_bytes`` (endless ``data:`` lines) is an :class:`UnexpectedAnswer`."""

    def __init__(self, task_id: str, *, limit_bytes: int) -> None:
        self._task_id = task_id
        self._limit_bytes = limit_bytes
        self._event = ""
        self._data: list[str] = []
        self._data_length = 0
        self._id: str | None = None

    def line(self, line: str) -> SseMessage | None:
        if not line:
            if not self._data and not self._event:
                return None
            message = SseMessage(event=self._event or "message", data="\n".join(self._data), id=self._id)
            self._event, self._data, self._data_length, self._id = "", [], 0, None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data_length += len(value) + 1
            if self._data_length > self._limit_bytes:
                raise too_long(self._task_id, "an event", self._limit_bytes)
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


_event = msgspec.json.Decoder(Event)


class StreamFollow:
    """What a stream of one task has delivered so far, so that a new connection resumes after the last event seen
    (``Last-Event-ID``) and nothing is handed on twice or skipped."""

    def __init__(self, task_id: str, *, after_seq: int = 0, max_bytes: int) -> None:
        self.task_id = task_id
        self.last_seq = after_seq
        self.ended = False
        self.max_bytes = max_bytes
        self._decoder = SseDecoder(task_id, limit_bytes=max_bytes)

    def headers(self) -> dict[str, str]:
        """Headers of the next connection: resume after the last event seen."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        return headers

    def connected(self) -> None:
        """A new connection: whatever the last one left half-read is dropped (its events will be sent again)."""
        self._decoder = SseDecoder(self.task_id, limit_bytes=self.max_bytes)

    def line(self, line: str) -> Event | None:
        """Feed one line; returns an Event the first time its seq is seen, after every earlier one."""
        message = self._decoder.line(line)
        if message is None:
            return None
        if message.event == "error":
            raise errors.Unavailable(503, f"the stream of task {self.task_id} broke off: {message.data}")
        if message.event == "subscribed" or (message.event == "message" and not message.data):
            return None
        try:
            event = _event.decode(message.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise errors.UnexpectedAnswer(f"the stream of task {self.task_id}: {exc}") from None
        if event.seq <= self.last_seq:
            return None  # already handed on before a reconnect
        self.last_seq = event.seq
        if event.type.final:
            self.ended = True
        return event

    def finished_without_body(self) -> None:
        """A 204: the stream has nothing more (its final event was seen before)."""
        self.ended = True


def ended_early(follow: StreamFollow) -> errors.TransportError:
    """A stream that ended before its task's final event (the server shut down, or this reader fell behind)."""
    return errors.TransportError(f"the stream of task {follow.task_id} ended before the task's final event")
