"""What ``Relay`` and ``AsyncRelay`` share: every request as data, the retry policy, error mapping, pagination and
the reading of a task's Server-Sent Events.

Both clients build each request here (a :class:`Call`) and only send it their own way, so the two surfaces cannot
drift apart: a path, a parameter, a retry rule or an error class is written once.
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from relay_client import errors
from relay_client.types import (
    AttemptList,
    ClusterView,
    DeadLetter,
    DeadLetterPage,
    DeadLetterReason,
    Destination,
    DestinationPage,
    DestinationState,
    ErrorBody,
    Event,
    EventList,
    EventType,
    ReplayOne,
    ReplayResult,
    SigningSecret,
    Stats,
    Task,
    TaskPage,
    TaskStatus,
)

__version__ = "0.1.0"

USER_AGENT = f"relay-client-python/{__version__}"
# Seconds to connect, and to wait for each answer; a caller's own ``timeout`` replaces both.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 30.0
# A stream sends a comment at least every 15 s: this long without a byte means it is dead, and it is resumed.
DEFAULT_STREAM_IDLE_S = 45.0
# Retries of one call stop this long after its first attempt: what is still failing then is raised.
DEFAULT_RETRY_DEADLINE_S = 60.0
# The first backoff, doubled after each failure up to the second (each wait jittered between half and all of it).
DEFAULT_BACKOFF_INITIAL_S = 0.25
DEFAULT_BACKOFF_MAX_S = 5.0
# A waiting ``wait`` polls this often when it cannot stream.
DEFAULT_POLL_INTERVAL_S = 1.0

FINAL_EVENT_TYPES = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED})
FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Retries:
    """How calls that are safe to repeat (reads and submissions, which always carry an ``Idempotency-Key``) are
    retried on connection errors, timeouts, 429 and 503: exponential backoff with jitter that waits at least what
    ``Retry-After`` asks, until ``deadline_s`` after the first attempt. Nothing else is ever retried.

    Attributes:
        deadline_s: Give up (raise the last error) once this long has passed since the first attempt, or when the
            next wait would end past it. 0 turns retries off.
        initial_s: The first backoff.
        max_s: The longest backoff (a ``Retry-After`` may ask for more, within the deadline).
    """

    deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    max_s: float = DEFAULT_BACKOFF_MAX_S

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("Retries: need deadline_s >= 0 and 0 < initial_s <= max_s")


DEFAULT_RETRIES = Retries()
NO_RETRIES = Retries(deadline_s=0)


class Retrier:
    """The retry decisions of one call: after each failure, how long to wait before the next attempt, or None to
    give up. Pure apart from its clock and random source, which tests pass in.
    """

    def __init__(
        self,
        policy: Retries,
        *,
        safe: bool,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._safe = safe
        self._clock = clock
        self._rng = rng or random.Random()
        self._outer_deadline = deadline
        self.reset()

    def reset(self) -> None:
        """Progress was made (a stream delivered events): the backoff and the deadline start again."""
        self._failures = 0
        own = self._clock() + self._policy.deadline_s
        self._deadline = own if self._outer_deadline is None else min(own, self._outer_deadline)

    def delay_s(self, error: errors.RelayError) -> float | None:
        """The wait before retrying after ``error``, or None when it must be raised."""
        if not self._safe or not retryable(error):
            return None
        base = min(self._policy.max_s, self._policy.initial_s * 2.0**self._failures)
        self._failures += 1
        wait = base / 2 + self._rng.uniform(0, base / 2)
        if isinstance(error, errors.RateLimited | errors.Unavailable) and error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        if self._clock() + wait > self._deadline:
            return None
        return wait


def retryable(error: errors.RelayError) -> bool:
    """Whether trying the same request again may fix ``error`` (for a request that is safe to repeat)."""
    return isinstance(error, (errors.TransportError, errors.RateLimited, errors.Unavailable))


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_STATUS_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.BadRequest,
    422: errors.Invalid,
}

_error_body = msgspec.json.Decoder(ErrorBody)


def api_error(status: int, headers: Mapping[str, str], content: bytes) -> errors.ApiError:
    """The error for an answer with an error status: its class by status, Relay's ``detail`` as the message."""
    try:
        detail = _error_body.decode(content).detail
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = content[:500].decode("utf-8", "replace").strip() or httpx.codes.get_reason_phrase(status)
    if status in (429, 503):
        retry_cls = errors.RateLimited if status == 429 else errors.Unavailable
        return retry_cls(status, detail, retry_after_s(headers.get("retry-after")))
    return _STATUS_ERRORS.get(status, errors.ApiError)(status, detail)


def transport_error(exc: httpx.TransportError, method: str, url: str) -> errors.TransportError:
    """Our error for one of httpx's transport errors (raised ``from`` it, so the cause stays in the traceback)."""
    what = f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return errors.ConnectError(what)
    if isinstance(exc, httpx.TimeoutException):
        return errors.RequestTimeout(what)
    return errors.TransportError(what)


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T]):
    """One request: what to send, how to read the answer, and whether it may be repeated."""

    method: str
    path: str
    answer: type[T] | None  # None: an answer without a body (204)
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Safe to send again: reads, and submissions (whose Idempotency-Key makes a repeat return the first task).
    safe: bool = False

    def decode(self, content: bytes) -> T:
        if self.answer is None:
            return None  # type: ignore[return-value]  # Call[None]
        try:
            return msgspec.json.decode(content, type=self.answer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise errors.UnexpectedAnswer(f"{self.method} {self.path}: {exc}") from None

    def with_params(self, **params: str) -> Call[T]:
        return replace(self, params={**self.params, **params})


_encode = msgspec.json.Encoder().encode


def _query(**values: Any) -> dict[str, str]:
    """Query parameters, the ones left None dropped; times as RFC 3339, enums as their value."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, TaskStatus | DeadLetterReason | DestinationState):
            out[name] = value.value
        else:
            out[name] = str(value)
    return out


def new_idempotency_key() -> str:
    """A key for one submission, made once per call and sent with each of its attempts."""
    return f"relay-client-{uuid.uuid4().hex}"


# The requests, one builder each.


def submit_task(
    kind: str,
    input: Any,
    *,
    webhook: str | None,
    events: Iterable[EventType | str] | None,
    websocket: bool,
    run_at: datetime | None,
    delay_s: float | None,
    idempotency_key: str | None,
) -> Call[Task]:
    body: dict[str, Any] = {"kind": kind, "input": input, "websocket": websocket}
    if webhook is not None:
        hook: dict[str, Any] = {"url": webhook}
        if events is not None:
            hook["events"] = [e.value if isinstance(e, EventType) else e for e in events]
        body["webhook"] = hook
    elif events is not None:
        raise ValueError("events= names the webhook's event types: give webhook= too")
    if run_at is not None:
        body["run_at"] = run_at
    if delay_s is not None:
        body["delay_s"] = delay_s
    key = idempotency_key if idempotency_key is not None else new_idempotency_key()
    return Call(
        method="POST",
        path="/v1/tasks",
        answer=Task,
        body=_encode(body),
        headers={"Idempotency-Key": key},
        safe=True,
    )


def get_task(task_id: str) -> Call[Task]:
    return Call(method="GET", path=f"/v1/tasks/{_segment(task_id)}", answer=Task, safe=True)


def list_tasks(
    *,
    status: TaskStatus | str | None,
    kind: str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    page_size: int | None,
) -> Call[TaskPage]:
    params = _query(status=status, kind=kind, tenant=tenant, since=since, until=until, limit=page_size)
    return Call(method="GET", path="/v1/tasks", answer=TaskPage, params=params, safe=True)


def cancel_task(task_id: str) -> Call[Task]:
    return Call(method="POST", path=f"/v1/tasks/{_segment(task_id)}/cancel", answer=Task)


def task_events(task_id: str, *, after_seq: int, page_size: int | None) -> Call[EventList]:
    params = _query(after_seq=after_seq, limit=page_size)
    return Call(method="GET", path=f"/v1/tasks/{_segment(task_id)}/events", answer=EventList, params=params, safe=True)


def task_deliveries(task_id: str) -> Call[AttemptList]:
    return Call(method="GET", path=f"/v1/tasks/{_segment(task_id)}/deliveries", answer=AttemptList, safe=True)


def stream_path(task_id: str) -> str:
    return f"/v1/tasks/{_segment(task_id)}/stream"


def list_dead_letters(
    *,
    reason: DeadLetterReason | str | None,
    tenant: str | None,
    task_id: str | None,
    since: datetime | None,
    until: datetime | None,
    page_size: int | None,
) -> Call[DeadLetterPage]:
    params = _query(reason=reason, tenant=tenant, task_id=task_id, since=since, until=until, limit=page_size)
    return Call(method="GET", path="/v1/dead-letters", answer=DeadLetterPage, params=params, safe=True)


def get_dead_letter(dead_letter_id: str) -> Call[DeadLetter]:
    return Call(method="GET", path=f"/v1/dead-letters/{_segment(dead_letter_id)}", answer=DeadLetter, safe=True)


def replay_dead_letter(dead_letter_id: str) -> Call[ReplayOne]:
    return Call(method="POST", path=f"/v1/dead-letters/{_segment(dead_letter_id)}/replay", answer=ReplayOne)


def replay_dead_letters(
    *,
    dry_run: bool,
    reason: DeadLetterReason | str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Call[ReplayResult]:
    body: dict[str, Any] = {"dry_run": dry_run}
    body.update(_query(reason=reason, tenant=tenant))
    body.update({k: v for k, v in (("since", since), ("until", until)) if v is not None})
    # A dry run changes nothing, so it may be repeated; a real one may not (it could replay twice).
    return Call(method="POST", path="/v1/dead-letters/replay", answer=ReplayResult, body=_encode(body), safe=dry_run)


def delete_dead_letter(dead_letter_id: str) -> Call[None]:
    return Call(method="DELETE", path=f"/v1/dead-letters/{_segment(dead_letter_id)}", answer=None)


def list_destinations(
    *, state: DestinationState | str | None, tenant: str | None, page_size: int | None
) -> Call[DestinationPage]:
    params = _query(state=state, tenant=tenant, limit=page_size)
    return Call(method="GET", path="/v1/destinations", answer=DestinationPage, params=params, safe=True)


def get_destination(destination_id: str) -> Call[Destination]:
    return Call(method="GET", path=f"/v1/destinations/{_segment(destination_id)}", answer=Destination, safe=True)


def destination_action(destination_id: str, action: str) -> Call[Destination]:
    return Call(method="POST", path=f"/v1/destinations/{_segment(destination_id)}/{action}", answer=Destination)


def update_destination(
    destination_id: str, *, max_in_flight: int | None, rate_per_s: float | msgspec.UnsetType | None
) -> Call[Destination]:
    body: dict[str, Any] = {}
    if max_in_flight is not None:
        body["max_in_flight"] = max_in_flight
    if rate_per_s is not msgspec.UNSET:
        body["rate_per_s"] = rate_per_s
    return Call(
        method="PATCH", path=f"/v1/destinations/{_segment(destination_id)}", answer=Destination, body=_encode(body)
    )


def stats(*, tenant: str | None) -> Call[Stats]:
    return Call(method="GET", path="/v1/stats", answer=Stats, params=_query(tenant=tenant), safe=True)


def get_signing_secret() -> Call[SigningSecret]:
    return Call(method="GET", path="/v1/signing-secret", answer=SigningSecret, safe=True)


def rotate_signing_secret() -> Call[SigningSecret]:
    return Call(method="POST", path="/v1/signing-secret/rotate", answer=SigningSecret)


def ops_signing_secret() -> Call[SigningSecret]:
    return Call(method="GET", path="/v1/ops/signing-secret", answer=SigningSecret, safe=True)


def ops_cluster() -> Call[ClusterView]:
    return Call(method="GET", path="/v1/ops/cluster", answer=ClusterView, safe=True)


class _Acknowledged(msgspec.Struct):
    acknowledged: bool


def ops_acknowledge_store_loss() -> Call[_Acknowledged]:
    return Call(method="POST", path="/v1/ops/store/acknowledge", answer=_Acknowledged)


def _segment(value: str) -> str:
    """An id as one path segment (an id with a slash in it must not reach another route)."""
    if not value or "/" in value or "?" in value or "#" in value:
        raise ValueError(f"not an id: {value!r}")
    return value


# Pagination: a list is one call repeated with the cursor (or the after_seq) each page hands on.


class _Paged(msgspec.Struct):
    next_cursor: str | None


def next_page(call: Call[Any], page: _Paged | Any) -> Call[Any] | None:
    """The call for the page after ``page``, or None on the last one."""
    cursor = page.next_cursor
    return None if cursor is None else call.with_params(cursor=cursor)


def next_events_page(call: Call[EventList], page: EventList) -> Call[EventList] | None:
    """The call for the events after ``page``, or None on the last page."""
    after = page.next_after_seq
    return None if after is None or not page.events else call.with_params(after_seq=str(after))


# Server-Sent Events.


@dataclass(slots=True)
class SseMessage:
    event: str = "message"
    data: str = ""
    id: str | None = None


class SseDecoder:
    """Turns the lines of ``text/event-stream`` (without their line ends) into messages, as the HTML standard
    says: ``field: value`` lines, ``:`` comments, a blank line ends a message."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def line(self, line: str) -> SseMessage | None:
        if not line:
            if not self._data and not self._event:
                return None
            message = SseMessage(event=self._event or "message", data="\n".join(self._data), id=self._id)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


_event = msgspec.json.Decoder(Event)


class StreamFollow:
    """What a stream of one task has delivered so far, so that a new connection resumes after the last event seen
    (``Last-Event-ID``) and nothing is handed on twice or skipped."""

    def __init__(self, task_id: str, *, after_seq: int = 0) -> None:
        self.task_id = task_id
        self.last_seq = after_seq
        self.ended = False
        self._decoder = SseDecoder()

    def headers(self) -> dict[str, str]:
        """Headers of the next connection: resume after the last event seen."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        return headers

    def connected(self) -> None:
        """A new connection: whatever the last one left half-read is dropped (its events will be sent again)."""
        self._decoder = SseDecoder()

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
        if event.type in FINAL_EVENT_TYPES:
            self.ended = True
        return event

    def finished_without_body(self) -> None:
        """A 204: the stream has nothing more (its final event was seen before)."""
        self.ended = True


def ended_early(follow: StreamFollow) -> errors.TransportError:
    """A stream that ended before its task's final event (the server shut down, or this reader fell behind)."""
    return errors.TransportError(f"the stream of task {follow.task_id} ended before the task's final event")


# Timeouts and deadlines.


def timeout_of(timeout: float | httpx.Timeout | None, *, own_client: bool) -> Any:
    """The ``timeout`` to pass with each request: the caller's, else ours for a client we made, else the caller's
    client's own (``httpx.USE_CLIENT_DEFAULT``)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is not None:
        return httpx.Timeout(timeout)
    if own_client:
        return httpx.Timeout(DEFAULT_TIMEOUT_S, connect=DEFAULT_CONNECT_TIMEOUT_S)
    return httpx.USE_CLIENT_DEFAULT


def stream_timeout(deadline: float | None) -> httpx.Timeout:
    """Timeouts for one stream connection: reads may wait for the server's keep-alive comments, but not past the
    caller's deadline."""
    read_s = DEFAULT_STREAM_IDLE_S
    if deadline is not None:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise errors.RequestTimeout("the deadline passed")
        read_s = min(read_s, left_s)
    return httpx.Timeout(DEFAULT_TIMEOUT_S, connect=min(DEFAULT_CONNECT_TIMEOUT_S, read_s), read=read_s)


def past(deadline: float | None, *, ahead_s: float = 0.0) -> bool:
    """Whether ``deadline`` (``time.monotonic()``) has passed, or will have in ``ahead_s``."""
    return deadline is not None and time.monotonic() + ahead_s >= deadline


def body_headers(call: Call[Any]) -> dict[str, str]:
    return {"Content-Type": "application/json"} if call.body is not None else {}
