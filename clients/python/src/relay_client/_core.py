"""What ``Relay`` and ``AsyncRelay`` share: every request as data, error mapping, pagination and timeouts (the
retry policy is in ``_retry``, the reading of a task's stream in ``_sse``).

Both clients build each request here (a :class:`Call`) and only send it their own way, so the two surfaces cannot
drift apart: a path, a parameter, a retry rule or an error class is written once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from relay_client import errors
from relay_client._retry import Retrier, retry_after_s
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
# A waiting ``wait`` polls this often when it cannot stream.
DEFAULT_POLL_INTERVAL_S = 1.0
# The most bytes of one answer (and of one line or one event of a stream) read into memory. Relay's largest answers
# (a page of tasks, about 4 MB; a task's result) stay far below it; what goes past it is not Relay's (a proxy's
# download, a hostile host) and must not exhaust memory. ``max_answer_bytes`` replaces it.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
# The most bytes of an error answer read: its ``detail`` is all that is shown of it.
MAX_ERROR_BYTES = 64 * 1024


T = TypeVar("T")


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


def checked_base_url(url: str) -> str:
    """``url`` without its trailing slashes, once it is known to be an absolute http(s) URL: anything else (no
    scheme, ``127.0.0.1:8000``) would fail on every call, and is better told at once."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"Relay needs an http:// or https:// base URL, such as http://127.0.0.1:8000; got {url!r}")
    return url.rstrip("/")


def unusable_url(exc: Exception, method: str, url: str) -> ValueError:
    """A URL httpx cannot send to (a scheme it has no transport for, a malformed host): no retry can fix it."""
    error = ValueError(f"{method} {url}: not a URL this client can send to: {exc}")
    error.__cause__ = exc
    return error


# What one try may fail with that the retry policy judges (any other exception ends the call as it is).
TRY_FAILURES: tuple[type[Exception], ...] = (httpx.TransportError, httpx.InvalidURL, errors.RelayError)


def retry_delay_s(exc: Exception, retrier: Retrier, method: str, url: str) -> float:
    """How long to wait before trying again after ``exc`` (one of :data:`TRY_FAILURES`), or raise what ends the
    call: a URL httpx cannot send to (no retry can fix it) at once; else our error for ``exc``, after retries saying
    how many tries over how long it had no answer. The one mapping of both clients' calls and streams."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        raise unusable_url(exc, method, url) from exc
    error = transport_error(exc, method, url) if isinstance(exc, httpx.TransportError) else exc
    if not isinstance(error, errors.RelayError):
        raise exc
    delay = retrier.delay_s(error)
    if delay is None:
        final = gave_up(error, retrier)
        if final is exc:
            raise exc  # as it came, its context with it
        raise final from final.__cause__
    return delay


def gave_up(error: errors.RelayError, retrier: Retrier) -> errors.RelayError:
    """The error of a call's last try; after retries, a transport error says how many tries over how long."""
    if retrier.tries <= 1 or not isinstance(error, errors.TransportError):
        return error
    said = type(error)(f"{error} (no answer in {retrier.tries} tries over {retrier.elapsed_s():.0f} s)")
    said.__cause__ = error.__cause__
    return said


def refuse_redirect(status: int, headers: Mapping[str, str], method: str, url: str) -> None:
    """Relay never redirects: one that does is a misconfigured URL or someone else's host, which must not be
    followed (it would get the request again) nor taken for an answer."""
    if 300 <= status < 400:
        location = headers.get("location")
        where = f" to {location}" if location else ""
        raise errors.UnexpectedAnswer(
            f"{method} {url} answered {status}, a redirect{where}, which Relay never sends: is this Relay's URL?"
        )


def answer_to(
    what: str, response: httpx.Response, *, max_answer_bytes: int, timeout: httpx.Timeout, deadline: float | None
) -> Answer:
    """The :class:`Answer` to read ``response``'s body into: a 2xx one up to ``max_answer_bytes``, an error one's
    start; within ``timeout``'s read over the whole body, and never past ``deadline``."""
    answer = Answer(
        what,
        limit_bytes=max_answer_bytes if response.is_success else MAX_ERROR_BYTES,
        truncate=not response.is_success,
        deadline=answer_deadline(timeout, deadline),
    )
    answer.declared(response.headers)
    return answer


class Answer:
    """An answer's body as it is read, at most ``limit_bytes`` of it, and no later than ``deadline``.

    Past the limit, a 2xx answer is an :class:`UnexpectedAnswer`; an error answer is kept up to the limit (its start
    is its detail). Past the deadline (a body that trickles), a :class:`RequestTimeout`: httpx's read timeout is per
    read, so a byte a second would never end.
    """

    def __init__(self, what: str, *, limit_bytes: int, truncate: bool, deadline: float | None) -> None:
        self.what = what
        self.limit_bytes = limit_bytes
        self.truncate = truncate
        self.deadline = deadline
        self._chunks: list[bytes] = []
        self._size = 0

    def declared(self, headers: Mapping[str, str]) -> None:
        """Refuse at once an answer whose Content-Length is past the limit."""
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return
        if length > self.limit_bytes and not self.truncate:
            raise self.too_large()

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False when the answer is whole as far as it will be read (an error answer's limit)."""
        self.check_deadline()
        self._size += len(chunk)
        if self._size > self.limit_bytes:
            if not self.truncate:
                raise self.too_large()
            self._chunks.append(chunk[: len(chunk) - (self._size - self.limit_bytes)])
            return False
        self._chunks.append(chunk)
        return True

    def check_deadline(self) -> None:
        if past(self.deadline):
            raise errors.RequestTimeout(f"{self.what}: the answer did not end in time")

    def content(self) -> bytes:
        return b"".join(self._chunks)

    def too_large(self) -> errors.UnexpectedAnswer:
        return errors.UnexpectedAnswer(
            f"{self.what} answered more than {self.limit_bytes} bytes (max_answer_bytes): not Relay's answer"
        )


def transport_error(exc: httpx.TransportError, method: str, url: str) -> errors.TransportError:
    """Our error for one of httpx's transport errors, with it as its ``__cause__`` from the start (a retry's
    ``on_retry`` sees it too, not only a traceback)."""
    what = f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": ")
    error: errors.TransportError
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        error = errors.ConnectError(what)
    elif isinstance(exc, httpx.TimeoutException):
        error = errors.RequestTimeout(what)
    else:
        error = errors.TransportError(what)
    error.__cause__ = exc
    return error


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
    """Query parameters, the ones left None dropped; times as RFC 3339 (as in a body: ``Z`` for UTC), enums as their
    value."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = _encode(value).decode()[1:-1]
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


class Cursors:
    """The cursors one list has followed. Relay's list may answer a page with no items and a cursor (a page looks
    at so many entries at most, and none of them matched): that page moves on, and is followed. A cursor answered
    a second time would page forever, and is not Relay's answer."""

    def __init__(self) -> None:
        self._followed: set[str] = set()

    def next_page(self, call: Call[Any], page: Any) -> Call[Any] | None:
        """The call for the page after ``page``, or None on the last one."""
        cursor = page.next_cursor
        if cursor is None:
            return None
        if cursor in self._followed:
            raise errors.UnexpectedAnswer(
                f"{call.method} {call.path} answered a cursor it had answered before: the list would not end"
            )
        self._followed.add(cursor)
        return call.with_params(cursor=cursor)


def next_events_page(call: Call[EventList], page: EventList) -> Call[EventList] | None:
    """The call for the events after ``page``, or None on the last page. A page may hold no event and still move on
    (the events it read could not be decoded); a ``next_after_seq`` that does not move on would page forever."""
    after = page.next_after_seq
    if after is None:
        return None
    if after <= int(call.params.get("after_seq", "0")):
        raise errors.UnexpectedAnswer(
            f"{call.method} {call.path} answered next_after_seq {after} after {call.params.get('after_seq', '0')}:"
            " the events would not end"
        )
    return call.with_params(after_seq=str(after))


# Timeouts and deadlines.


def settled_timeout(
    timeout: float | httpx.Timeout | None, client: httpx.Client | httpx.AsyncClient | None
) -> httpx.Timeout:
    """The timeouts of every request of one client, settled when it is made: the caller's, else its ``client``'s
    own, else ours (5 s to connect, 30 s for the rest)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is not None:
        return httpx.Timeout(timeout)
    if client is not None:
        return client.timeout
    return httpx.Timeout(DEFAULT_TIMEOUT_S, connect=DEFAULT_CONNECT_TIMEOUT_S)


def capped(timeout: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """``timeout``, each part no longer than what is left until ``deadline`` (a ``wait``'s)."""
    if deadline is None:
        return timeout
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise errors.RequestTimeout("the deadline passed")

    def cap(value: float | None) -> float:
        return left_s if value is None else min(value, left_s)

    return httpx.Timeout(
        connect=cap(timeout.connect), read=cap(timeout.read), write=cap(timeout.write), pool=cap(timeout.pool)
    )


def answer_deadline(timeout: httpx.Timeout, deadline: float | None) -> float | None:
    """When an answer whose headers are in must have ended: its read timeout over the whole body (not per read),
    and never past the caller's ``deadline``."""
    own = None if timeout.read is None else time.monotonic() + timeout.read
    if own is None or deadline is None:
        return own if deadline is None else deadline
    return min(own, deadline)


def stream_timeout(timeout: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """Timeouts for one stream connection: the client's ``timeout``, but reads may wait for the server's keep-alive
    comments; none past the caller's deadline."""
    return capped(
        httpx.Timeout(connect=timeout.connect, read=DEFAULT_STREAM_IDLE_S, write=timeout.write, pool=timeout.pool),
        deadline,
    )


def past(deadline: float | None) -> bool:
    """Whether ``deadline`` (``time.monotonic()``) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def poll_wait_s(deadline: float | None) -> float:
    """How long a polling ``wait`` sleeps: its interval, or what is left until its deadline."""
    if deadline is None:
        return DEFAULT_POLL_INTERVAL_S
    return max(0.0, min(DEFAULT_POLL_INTERVAL_S, deadline - time.monotonic()))


def body_headers(call: Call[Any]) -> dict[str, str]:
    return {"Content-Type": "application/json"} if call.body is not None else {}
