"""``/v1/tasks``: submit, list, read, follow and cancel tasks."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, HeaderParameter, QueryParameter
from litestar.response import Stream
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
    HTTP_409_CONFLICT,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delivery.address_guard import check_callback_url
from delivery.errors import ForbiddenAddress, InvalidCallbackUrl, InvalidCursor, RecordChanged, UnreadableRecord
from delivery.ids import new_id, utcnow
from delivery.replication import NotReplicated
from delivery.store_refusals import WriteRefusal, refusal_of
from schemas.api import DEFAULT_PAGE_SIZE, MAX_ID_CHARS, MAX_PAGE_SIZE
from schemas.deliveries import AttemptList
from schemas.events import EventList
from schemas.tasks import MAX_SCHEDULE_AHEAD_S, Task, TaskPage, TaskRecord, TaskStatus, TaskSubmission
from schemas.ws import MAX_SEQ
from service.api.auth import Principal, Reader, bearer_token, require_tenant, tenant_scope
from service.api.http_protocol import connection_control
from service.api.openapi import BODY_ERRORS, STREAM_READERS, TASK_READERS, TENANT_ONLY, errors
from service.api.sse import EventStream, keepalive_s
from service.api.state import ApiState
from service.api.store_watch import RETRY_AFTER_S
from service.api.time_range import check_time_range
from service.api.ws import client_address
from service.tasks.event_log import MAX_EVENTS_PER_PAGE
from service.tasks.listing import TaskFilter
from service.tasks.store import (
    KeyInProgress,
    KeyReused,
    NotAdmitted,
    TaskEnded,
    TenantFull,
    place,
    request_fingerprint,
)

log = logging.getLogger("relay.api")

# What "Try it out" starts from: bodies that work as they stand (the schema alone makes one that cannot: both
# run_at and delay_s, a webhook URL of "string").
SUBMISSION_EXAMPLES = [
    Example(summary="echo, polled", value={"kind": "echo", "input": {"hello": "world"}}),
    Example(
        summary="sleep, followed live over the WebSocket or the stream",
        value={"kind": "sleep", "input": {"seconds": 3}, "websocket": True},
    ),
    Example(
        summary="echo, its result posted to a webhook",
        value={"kind": "echo", "input": {"order": 42}, "webhook": {"url": "https://hooks.example.com/relay"}},
    ),
    Example(summary="echo in a minute", value={"kind": "echo", "input": {"later": True}, "delay_s": 60}),
]

# Idempotency keys longer than this are refused.
MAX_IDEMPOTENCY_KEY_CHARS = 255
# The 503 of a submission its master stored but no replica acknowledged in time: a failover may still lose it.
NOT_REPLICATED_DETAIL = (
    "no replica of the store acknowledged the write in time: the task may have been accepted. Retry with the same "
    "Idempotency-Key header, which returns that task rather than making a second one"
)
# No kind name is longer than this.
MAX_KIND_CHARS = 200
# A ws_token is 32 characters; anything much longer is not one.
MAX_TOKEN_CHARS = 256


class TaskController(Controller):
    path = "/v1"
    tags = ["tasks"]

    @post(
        "/tasks",
        operation_id="tasks_submit",
        response_description="The task, queued or scheduled (for an Idempotency-Key used before: the first one)",
        status_code=HTTP_202_ACCEPTED,
        summary="Submit a task",
        description="Accepted (202) with the task, `queued`, or `scheduled` with `run_at` or `delay_s`. Its events "
        "go to the WebSocket (`websocket: true`) and then to `webhook.url`; with neither, poll it. Send an "
        "`Idempotency-Key` and retry with the same key after a 503 or a lost answer: the first task comes back.",
        security=TENANT_ONLY,
        responses=errors(
            *BODY_ERRORS,
            403,
            409,
            429,
            why={
                409: "A request with this Idempotency-Key and another body is in progress; retry after Retry-After",
                422: "An unknown kind, an input that does not fit the kind, a webhook URL that is not absolute "
                "http(s) or resolves to a forbidden address, run_at and delay_s both, or an Idempotency-Key used "
                "for another body",
                429: "Over RELAY_SUBMIT_RATE, or the tenant has RELAY_TENANT_MAX_OPEN_TASKS tasks not yet ended; "
                "Retry-After says when to try again",
            },
        ),
    )
    async def submit(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        data: Annotated[TaskSubmission, Body(media_type=RequestEncodingType.JSON, examples=SUBMISSION_EXAMPLES)],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                header="idempotency-key",
                description="Up to 255 characters of your choosing, one per task: the same key (per tenant, 24 h) "
                "with the same body returns the first answer and runs nothing again.",
                examples=[Example(value="order-42-receipt")],
            ),
        ] = None,
    ) -> Task:
        tenant = require_tenant(principal)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise ValidationException(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")
        refusal = state_.store_watch.refusal()
        if refusal is not None and idempotency_key is None:
            raise _refused(state_, refusal)  # with a key, the submit step still answers a key used before
        if state_.rate_limiter is not None:
            wait_s = await state_.rate_limiter.retry_after_s(tenant)
            if wait_s is not None:
                raise TooManyRequestsException(
                    detail=f"more than {state_.settings.submit_rate:g} submissions a second; retry in {wait_s} s",
                    headers={"Retry-After": str(wait_s)},
                )
        kind = state_.kinds.get(data.kind)
        if kind is None:
            raise ValidationException(
                f"unknown task kind {data.kind!r}; known kinds: {', '.join(state_.kinds.names())}"
            )
        try:
            kind.parse_input(data.input)
        except msgspec.ValidationError as exc:
            raise ValidationException(f"input does not fit task kind {data.kind!r}: {exc}") from None
        if data.webhook is not None:
            await _check_webhook(data.webhook.url, allow_private=state_.settings.allow_private_callbacks)
        created_at = utcnow()
        run_at = _run_at(data, created_at)
        webhook = data.webhook.resolved() if data.webhook is not None else None
        record = TaskRecord(
            id=new_id("task", place(tenant, webhook.url if webhook is not None else None, idempotency_key)),
            kind=data.kind,
            status=TaskStatus.QUEUED if run_at is None else TaskStatus.SCHEDULED,
            input=data.input,
            created_at=created_at,
            webhook=webhook,
            websocket=data.websocket,
            ws_token=secrets.token_urlsafe(24),
            tenant=tenant,
            run_at=run_at,
        )
        try:
            stored = await state_.create_task(
                record,
                idempotency_key=idempotency_key,
                fingerprint=request_fingerprint(data),
                admit=refusal is None,
                delay_s=data.delay_s,
            )
        except TenantFull as exc:
            raise TooManyRequestsException(
                detail=f"this tenant has {exc.open_tasks} tasks that have not ended, the most it may have "
                f"(RELAY_TENANT_MAX_OPEN_TASKS); retry when some have ended",
                headers={"Retry-After": "5"},
            ) from None
        except KeyReused:
            # 422, as the IETF's Idempotency-Key draft says for a key reused with another payload (409 is what it
            # keeps for a request still in progress, which this one step never has).
            raise ValidationException(
                "this Idempotency-Key was used for another request (another body) in the last 24 h: use a new key "
                "for a new task; the same body with this key returns the first task"
            ) from None
        except KeyInProgress:
            raise HTTPException(
                status_code=HTTP_409_CONFLICT,
                detail="a request with this Idempotency-Key and another body is in progress; retry in a moment",
                headers={"Retry-After": "1"},
            ) from None
        except NotAdmitted:
            raise _refused(state_, refusal or WriteRefusal.FULL) from None
        except (RedisTimeoutError, RedisConnectionError) as exc:
            log.warning("submission: storage unavailable (%s: %s)", type(exc).__name__, exc)
            if _never_connected(exc):
                raise HTTPException(
                    status_code=HTTP_503_SERVICE_UNAVAILABLE,
                    detail="the store is unreachable (no connection could be made): nothing was stored; retry later",
                    headers={"Retry-After": "1"},
                ) from None
            # The step may have run in Redis although its answer never came back (a stall, a dropped connection).
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail="the store did not answer (stalled or unreachable): the task may have been accepted. Retry "
                "with the same Idempotency-Key header, which returns that task rather than making a second one"
                + ("" if idempotency_key else " (this request had none: send one with every submission)"),
                headers={"Retry-After": "1"},
            ) from None
        except NotReplicated as exc:
            log.warning("submission: not replicated (%s)", exc)
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=NOT_REPLICATED_DETAIL
                + ("" if idempotency_key else " (this request had none: send one with every submission)"),
                headers={"Retry-After": "1"},
            ) from None
        except RedisError as exc:
            refused = refusal_of(exc)
            if refused is None:
                raise  # the app's handler: 503
            state_.store_watch.refused_by_redis(refused)
            raise _refused(state_, refused) from None
        # The broker's own failures are the sweeper's (see ApiState.create_task).
        return stored

    @get(
        "/tasks",
        operation_id="tasks_list",
        response_description="A page of tasks, newest first",
        summary="Tasks, newest first",
        responses=errors(),
    )
    async def list_tasks(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        status: Annotated[TaskStatus | None, QueryParameter(query="status")] = None,
        kind: Annotated[str | None, QueryParameter(query="kind", max_length=MAX_KIND_CHARS)] = None,
        tenant: Annotated[str | None, QueryParameter(query="tenant")] = None,
        since: Annotated[datetime | None, QueryParameter(query="since")] = None,
        until: Annotated[datetime | None, QueryParameter(query="until")] = None,
        limit: Annotated[int, QueryParameter(query="limit", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(query="cursor")] = None,
    ) -> TaskPage:
        check_time_range(since, until)
        where = TaskFilter(tenant=tenant_scope(principal, tenant), status=status, kind=kind, since=since, until=until)
        try:
            records, next_cursor = await state_.task_list.page(where, limit=limit, cursor=cursor)
        except InvalidCursor as exc:
            raise ValidationException(f"query parameter cursor: {exc}") from None
        return TaskPage(items=[_shown(record, principal) for record in records], next_cursor=next_cursor)

    @get(
        "/tasks/{task_id:str}",
        operation_id="tasks_get",
        response_description="The task",
        summary="Read a task",
        security=TASK_READERS,
        responses=errors(404, 409),
    )
    async def read(
        self, state_: NamedDependency[ApiState], reader: NamedDependency[Reader], task_id: FromPath[str]
    ) -> Task:
        record = await _readable(state_, reader, task_id)
        return record.public() if reader.principal is None else _shown(record, reader.principal)

    @post(
        "/tasks/{task_id:str}/cancel",
        operation_id="tasks_cancel",
        response_description="The task, now cancelled (a running one's run stops on its worker within seconds)",
        status_code=HTTP_202_ACCEPTED,
        summary="Cancel a queued or running task (409 when it has ended)",
        responses=errors(
            404, 409, why={409: "It has ended already, or it is stored but cannot be read (it nests too deep)"}
        ),
    )
    async def cancel(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], task_id: FromPath[str]
    ) -> Task:
        await _owned(state_, principal, task_id)  # 404 for another tenant's, 409 for one that cannot be read
        try:
            cancelled = await state_.tasks.cancel(task_id, visible=lambda tenant, _: principal.can_see(tenant))
        except TaskEnded as exc:
            raise HTTPException(status_code=HTTP_409_CONFLICT, detail=str(exc)) from None
        except RecordChanged:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"task {task_id} kept changing while it was being cancelled; try again",
                headers={"Retry-After": "1"},
            ) from None
        if cancelled is None:
            raise NotFoundException(f"no task {task_id}")
        return _shown(cancelled, principal)

    @get(
        "/tasks/{task_id:str}/events",
        operation_id="tasks_events",
        response_description="A page of the task's events, oldest first",
        security=TASK_READERS,
        summary="A task's events, oldest first, a page at a time",
        description="Events with `seq > after_seq`, at most `limit`; a page of large events may hold fewer. "
        "`next_after_seq` is the `after_seq` of the next page, null on the last one.",
        responses=errors(404, 409),
    )
    async def events(
        self,
        state_: NamedDependency[ApiState],
        reader: NamedDependency[Reader],
        task_id: FromPath[str],
        after_seq: Annotated[int, QueryParameter(query="after_seq", ge=0, le=MAX_SEQ)] = 0,
        limit: Annotated[int, QueryParameter(query="limit", ge=1, le=MAX_EVENTS_PER_PAGE)] = MAX_EVENTS_PER_PAGE,
    ) -> EventList:
        await _readable(state_, reader, task_id)
        events, next_after_seq = await state_.events.events_page(task_id, after_seq, limit=limit)
        return EventList(events=events, next_after_seq=next_after_seq)

    @get(
        "/tasks/{task_id:str}/stream",
        operation_id="tasks_stream",
        response_description="The event stream (text/event-stream), until the task's final event",
        security=STREAM_READERS,
        summary="A task's events as Server-Sent Events, live, up to its final event",
        description=(
            "Authenticates with an API key, the admin token, or the task's ws_token (as bearer, or as ?token= for "
            "EventSource). Resumes after Last-Event-ID (header) or after_seq; sends `event: subscribed` (the "
            "WebSocket's subscribed frame), then each Event as `id: <seq>`, `event: <type>`, `data: <Event>`, a "
            "comment at least every 15 s, and ends after the final event. A reconnect whose Last-Event-ID is the "
            "final event's gets 204, which tells EventSource to stop. A stream never acks a delivery."
        ),
        media_type="text/event-stream",
        responses={
            HTTP_204_NO_CONTENT: ResponseSpec(
                data_container=None,
                description="Last-Event-ID is the final event's: nothing more will come (EventSource stops)",
                generate_examples=False,
            ),
            **errors(
                404,
                409,
                429,
                why={
                    422: "A Last-Event-ID or after_seq that is not a seq",
                    429: "Too many streams open from this address (RELAY_WS_MAX_PER_CLIENT) or for this tenant "
                    "(RELAY_TENANT_MAX_STREAMS)",
                },
            ),
        },
    )
    async def stream(
        self,
        request: Request,  # type: ignore[type-arg]
        state_: NamedDependency[ApiState],
        task_id: FromPath[str],
        after_seq: Annotated[int | None, QueryParameter(query="after_seq", ge=0, le=MAX_SEQ)] = None,
        token: Annotated[str | None, QueryParameter(query="token", max_length=MAX_TOKEN_CHARS)] = None,
        last_event_id: Annotated[str | None, HeaderParameter(header="last-event-id", required=False)] = None,
    ) -> Response[None] | Stream:
        resume_seq = _last_event_id(last_event_id)
        bearer = bearer_token(request)
        if bearer is not None:
            reader = Reader(principal=state_.auth.lookup(bearer), token=bearer)
        elif token:
            reader = Reader(principal=None, token=token)  # a ws_token only: no API key in a URL
        else:
            raise NotAuthorizedException("send Authorization: Bearer <api key or the task's ws_token>, or ?token=")
        record = await _get(state_, task_id, reader.may_read, may_see_unreadable=reader.principal is not None)
        if record is None:
            raise NotFoundException(f"no task {task_id}, or not one this token may follow")
        since = resume_seq if resume_seq is not None else after_seq or 0
        if resume_seq is not None and record.status.finished and resume_seq >= record.last_seq:
            # EventSource reconnects after every end; it stops only for a 204 (or an error).
            return Response(None, status_code=HTTP_204_NO_CONTENT)
        settings = state_.settings
        client = client_address(request, trusted_proxies=settings.trust_forwarded)
        if state_.sse_clients[client] >= settings.ws_max_per_client:
            raise TooManyRequestsException(
                detail=f"{state_.sse_clients[client]} streams are open from this address already "
                "(RELAY_WS_MAX_PER_CLIENT); close one, or try again later",
                headers={"Retry-After": "5"},
            )
        place = await state_.tenant_streams.acquire(record.tenant)
        if place is None:
            raise TooManyRequestsException(
                detail=f"this tenant has {settings.tenant_max_streams} sockets and streams open already "
                "(RELAY_TENANT_MAX_STREAMS); close one, or try again later",
                headers={"Retry-After": "5"},
            )
        events = EventStream(
            hub=state_.hub,
            events=state_.events,
            record=record,
            after_seq=since,
            keepalive_s=keepalive_s(settings.ws_ping_interval_s),
            stall_s=settings.ws_ping_timeout_s,
            control=connection_control(request.scope),
        )
        return Stream(
            state_.counted_stream(events.chunks(), client, place),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @get(
        "/tasks/{task_id:str}/deliveries",
        operation_id="tasks_deliveries",
        response_description="Every delivery attempt of the task's events, oldest first",
        summary="Every delivery attempt of a task's events, and its webhooks' dead-lettered and replayed steps",
        responses=errors(404, 409),
    )
    async def deliveries(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], task_id: FromPath[str]
    ) -> AttemptList:
        await _owned(state_, principal, task_id)
        attempts, steps = await state_.events.deliveries(task_id)
        return AttemptList(attempts=attempts, steps=steps)


def _last_event_id(value: str | None) -> int | None:
    """The seq in a Last-Event-ID header (the ``id:`` of the last event the client got), or None without one."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_SEQ:
        raise ValidationException(
            f"header Last-Event-ID: expected the seq of an event, 0 to {MAX_SEQ}, not {text[:40]!r}"
        )
    return int(text)


def _run_at(data: TaskSubmission, now: datetime) -> datetime | None:
    """When a submission may start: None for at once (a time already past included)."""
    if data.run_at is not None and data.delay_s is not None:
        raise ValidationException("give run_at or delay_s, not both")
    if data.delay_s is not None:
        return now + timedelta(seconds=data.delay_s) if data.delay_s > 0 else None
    if data.run_at is None:
        return None
    if data.run_at.tzinfo is None:
        raise ValidationException("run_at: give an RFC 3339 time with its offset (2026-12-24T18:00:00Z)")
    run_at = data.run_at.astimezone(UTC)
    if (run_at - now).total_seconds() > MAX_SCHEDULE_AHEAD_S:
        raise ValidationException(f"run_at: at most {MAX_SCHEDULE_AHEAD_S // 86400} days ahead")
    return run_at if run_at > now else None


def _shown(record: TaskRecord, principal: Principal) -> Task:
    """The task as ``principal`` sees it: its ``ws_token`` (the capability to follow it) only to its owner."""
    task = record.public()
    return task if principal.tenant == record.tenant else msgspec.structs.replace(task, ws_token=None)


async def _readable(state_: ApiState, reader: Reader, task_id: str) -> TaskRecord:
    record = await _get(state_, task_id, reader.may_read, may_see_unreadable=reader.principal is not None)
    if record is not None:
        return record
    if reader.principal is None:
        # Neither an API key nor this task's ws_token: the same 401 whether or not the task exists.
        raise NotAuthorizedException("unknown API key or token")
    raise NotFoundException(f"no task {task_id}")


async def _owned(state_: ApiState, principal: Principal, task_id: str) -> TaskRecord:
    record = await _get(state_, task_id, lambda tenant, _: principal.can_see(tenant), may_see_unreadable=True)
    if record is None:
        raise NotFoundException(f"no task {task_id}")
    return record


async def _get(
    state_: ApiState, task_id: str, visible: Callable[[str, str | None], bool], *, may_see_unreadable: bool
) -> TaskRecord | None:
    if not task_id.startswith("task_") or len(task_id) > MAX_ID_CHARS:
        return None
    try:
        return await state_.tasks.get(task_id, visible=visible)
    except UnreadableRecord as exc:
        if may_see_unreadable and exc.tenant is not None and visible(exc.tenant, None):
            log.error("task %s cannot be read: %s", task_id, exc)
            raise HTTPException(
                status_code=HTTP_409_CONFLICT, detail=f"task {task_id} is stored but cannot be read (it nests too deep)"
            ) from None
        return None


async def _check_webhook(url: str, *, allow_private: bool) -> None:
    try:
        await check_callback_url(url, allow_private=allow_private)
    except InvalidCallbackUrl as exc:
        raise ValidationException(f"webhook.url: {exc}") from None
    except ForbiddenAddress as exc:
        raise ValidationException(
            f"webhook.url: {exc}; a receiver on your own machine or network needs RELAY_ALLOW_PRIVATE_CALLBACKS=true "
            "(relay serve --allow-private-callbacks), for development only"
        ) from None
    except OSError as exc:
        raise ValidationException(f"webhook.url: cannot resolve its host ({exc.strerror or exc})") from None
    except ValueError as exc:  # UnicodeError among them: a host the IDNA codec refuses
        raise ValidationException(f"webhook.url: its host is not a valid name ({str(exc)[:200]})") from None


def _refused(state_: ApiState, refusal: WriteRefusal) -> HTTPException:
    """The 503 for a submission the store does not take now: nothing of it was stored."""
    state_.store_watch.refused[refusal] += 1
    return HTTPException(
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"{refusal.cause}. Nothing was stored: submit again later (Retry-After)",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _never_connected(exc: BaseException) -> bool:
    """Whether a Redis error happened before any connection was made (refused, or timed out connecting): then
    nothing was sent, so nothing can have been stored. redis-py raises these from within the OSError it caught."""
    if isinstance(exc, RedisTimeoutError) and str(exc).startswith("Timeout connecting"):
        return True
    seen: BaseException | None = exc
    for _ in range(5):  # a short chain: redis-py's error, its retry's, the OSError
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
