"""``AsyncRelay``: the asyncio client. Every request is built in ``_core``; this module only sends it, as
``_sync`` does for ``Relay``: the two differ in their I/O alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec

from relay_client import _core as core
from relay_client import _retry as retry
from relay_client import _sse as sse
from relay_client import errors
from relay_client.types import (
    AttemptList,
    ClusterView,
    DeadLetter,
    DeadLetterReason,
    Destination,
    DestinationState,
    Event,
    EventType,
    ReplayResult,
    Stats,
    Task,
    TaskStatus,
)

T = TypeVar("T")


class AsyncRelay:
    """A client of one Relay, for one API key (a tenant's key, or the admin token for ``ops`` and every tenant).

    Use it as a context manager, or call :meth:`aclose`, so that its connections are closed::

        async with AsyncRelay("http://127.0.0.1:8000", api_key) as relay:
            task = await relay.tasks.submit("echo", {"hello": "world"})
            print((await task.wait(timeout=30)).result)

    Reads and submissions are retried on connection errors, timeouts, 429 and 503 (see :class:`Retries`); every
    submission carries an ``Idempotency-Key``, so a retried one never makes a second task.

    Args:
        url: Relay's base URL, such as ``http://127.0.0.1:8000``.
        api_key: Sent as ``Authorization: Bearer``.
        timeout: Seconds for each request (connect, send, answer), or an ``httpx.Timeout``. Default: 5 s to
            connect, 30 s for the rest; with ``http_client``, that client's own.
        http_client: An ``httpx.AsyncClient`` of your own (its proxies, certificates, transport, limits); it is used
            as it is and not closed by :meth:`aclose`. Relay's URLs are absolute, so its ``base_url`` is not used.
        proxy: A proxy URL for the client this one makes (not with ``http_client``).
        retries: The retry policy; :data:`NO_RETRIES` turns retries off.
        max_answer_bytes: The most bytes of one answer, or of one line or event of a stream, read into memory (an
            error answer: 64 KiB); past it, :class:`UnexpectedAnswer`. Default 64 MiB.

    Raises:
        ValueError: ``url`` is not an absolute http:// or https:// URL.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
        proxy: str | httpx.Proxy | None = None,
        retries: retry.Retries = retry.DEFAULT_RETRIES,
        max_answer_bytes: int = core.DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        if http_client is not None and proxy is not None:
            raise ValueError("give proxy= or http_client=, not both: set the proxy on your own client")
        if max_answer_bytes <= 0:
            raise ValueError("max_answer_bytes must be > 0")
        self._base_url = core.checked_base_url(url)
        self._max_answer_bytes = max_answer_bytes
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": core.USER_AGENT}
        self._timeout = core.settled_timeout(timeout, http_client)
        self._owns_client = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(proxy=proxy, timeout=self._timeout)
        self._retries = retries
        self.tasks = AsyncTasks(self)
        self.dead_letters = AsyncDeadLetters(self)
        self.destinations = AsyncDestinations(self)
        self.signing_secret = AsyncSigningSecrets(self)
        self.ops = AsyncOps(self)

    async def __aenter__(self) -> AsyncRelay:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (of a client this one made; one passed in is yours to close)."""
        if self._owns_client:
            await self._http.aclose()

    async def stats(self, *, tenant: str | None = None) -> Stats:
        """Figures for dashboards (``GET /v1/stats``): a tenant's own, or with the admin token every tenant's (or
        ``tenant``'s)."""
        return await self._send(core.stats(tenant=tenant))

    # The I/O: the one place that sends.

    async def _send(self, call: core.Call[T], *, deadline: float | None = None) -> T:
        retrier = retry.Retrier(self._retries, safe=call.safe, deadline=deadline)
        url = self._base_url + call.path
        while True:
            try:
                content = await self._exchange(call, url, deadline)
            except core.TRY_FAILURES as exc:
                delay = core.retry_delay_s(exc, retrier, call.method, url)
            else:
                return call.decode(content)
            await asyncio.sleep(delay)

    async def _exchange(self, call: core.Call[Any], url: str, deadline: float | None) -> bytes:
        """One try: the body of a 2xx answer, read within its bounds; an error answer as ApiError."""
        timeout = core.capped(self._timeout, deadline)
        async with self._http.stream(
            call.method,
            url,
            params=call.params,
            content=call.body,
            headers={**self._headers, **call.headers, **core.body_headers(call)},
            timeout=timeout,
        ) as response:
            core.refuse_redirect(response.status_code, response.headers, call.method, url)
            answer = core.answer_to(
                f"{call.method} {url}",
                response,
                max_answer_bytes=self._max_answer_bytes,
                timeout=timeout,
                deadline=deadline,
            )
            await _read(response, answer)
            if not response.is_success:
                raise core.api_error(response.status_code, response.headers, answer.content())
            return answer.content()

    async def _pages(self, call: core.Call[Any]) -> AsyncIterator[Any]:
        page_call: core.Call[Any] | None = call
        cursors = core.Cursors()
        while page_call is not None:
            page = await self._send(page_call)
            for item in page.items:
                yield item
            page_call = cursors.next_page(page_call, page)

    async def _follow(self, follow: sse.StreamFollow, *, deadline: float | None = None) -> AsyncIterator[Event]:
        retrier = retry.Retrier(self._retries, safe=True, deadline=deadline)
        url = self._base_url + core.stream_path(follow.task_id)
        while not follow.ended:
            try:
                async with self._http.stream(
                    "GET",
                    url,
                    headers={**self._headers, **follow.headers()},
                    timeout=core.stream_timeout(self._timeout, deadline),
                ) as response:
                    core.refuse_redirect(response.status_code, response.headers, "GET", url)
                    if response.status_code == 204:
                        follow.finished_without_body()
                        return
                    if not response.is_success:
                        answer = core.answer_to(
                            f"GET {url}",
                            response,
                            max_answer_bytes=self._max_answer_bytes,
                            timeout=self._timeout,
                            deadline=deadline,
                        )
                        await _read(response, answer)
                        raise core.api_error(response.status_code, response.headers, answer.content())
                    follow.connected()
                    lines = sse.LineSplitter(follow.task_id, limit_bytes=self._max_answer_bytes)
                    async with _before(deadline, f"GET {url}"):
                        async for chunk in response.aiter_bytes():
                            for line in lines.feed(chunk):
                                event = follow.line(line)
                                if event is not None:
                                    retrier.reset()
                                    yield event
                                    if follow.ended:
                                        return
                raise sse.ended_early(follow)
            except core.TRY_FAILURES as exc:
                delay = core.retry_delay_s(exc, retrier, "GET", url)
            await asyncio.sleep(delay)


@contextlib.asynccontextmanager
async def _before(deadline: float | None, what: str) -> AsyncIterator[None]:
    """Cut what runs within at ``deadline`` (``time.monotonic()``, a ``wait``'s or an answer's), as a
    :class:`RequestTimeout`: httpx's read timeout is per read, and a body may trickle. One timer for a whole read,
    not one per chunk. A stream yields from within: its deadline is ``wait``'s alone, which reads on at once."""
    if deadline is None:
        yield
        return
    scope = asyncio.timeout_at(asyncio.get_running_loop().time() + (deadline - time.monotonic()))
    try:
        async with scope:
            yield
    except TimeoutError:
        if not scope.expired():
            raise
        raise errors.RequestTimeout(f"{what}: the deadline passed") from None


async def _read(response: httpx.Response, answer: core.Answer) -> None:
    """Read ``response``'s body into ``answer``, up to its limit and no later than its deadline."""
    async with _before(answer.deadline, answer.what):
        async for chunk in response.aiter_bytes():
            if not answer.add(chunk):
                return


class AsyncSubmittedTask(Task, kw_only=True, dict=True):
    """A task as :meth:`Tasks.submit` returned it, which can wait for its own end."""

    async def wait(self, timeout: float | None = None) -> Task:  # noqa: ASYNC109 -- Relay's surface, as the sync one
        """Wait until this task has ended; return it as it ended. See :meth:`AsyncTasks.wait`."""
        tasks: AsyncTasks = self.__dict__["_tasks"]
        return await tasks.wait(self.id, timeout=timeout)


class AsyncTasks:
    """``relay.tasks``: submit tasks, read them, follow them, cancel them."""

    def __init__(self, relay: AsyncRelay) -> None:
        self._relay = relay

    async def submit(
        self,
        kind: str,
        input: Any = None,
        *,
        webhook: str | None = None,
        events: Iterable[EventType | str] | None = None,
        websocket: bool = False,
        run_at: datetime | None = None,
        delay_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncSubmittedTask:
        """Submit a task (``POST /v1/tasks``).

        Args:
            kind: The task kind (``echo``, ``sleep``, ``fail``, or one your Relay registers).
            input: The kind's input: anything JSON can hold.
            webhook: A URL to POST the task's events to, signed (see :func:`verify_webhook`).
            events: The event types the webhook gets; default the final ones.
            websocket: Push its events to WebSocket subscribers first.
            run_at: Start no earlier than this (an aware ``datetime``) ...
            delay_s: ... or this many seconds from now (not both; at most 30 days).
            idempotency_key: Your key for this submission (24 h, per tenant): the same key returns the first task.
                Without one, the client makes one for this call; its retries all carry it.

        Returns:
            The task as accepted (``queued`` or ``scheduled``), with :meth:`AsyncSubmittedTask.wait`.

        Raises:
            Invalid: An unknown kind, an input that does not fit it, a webhook URL Relay refuses.
            RateLimited, Unavailable, TransportError: Still so when the retry deadline passed.
        """
        call = core.submit_task(
            kind,
            input,
            webhook=webhook,
            events=events,
            websocket=websocket,
            run_at=run_at,
            delay_s=delay_s,
            idempotency_key=idempotency_key,
        )
        task = await self._relay._send(call)
        submitted = AsyncSubmittedTask(**msgspec.structs.asdict(task))
        submitted.__dict__["_tasks"] = self
        return submitted

    async def get(self, task_id: str) -> Task:
        """One task (``GET /v1/tasks/{id}``). Raises :class:`NotFound` for an unknown id or another tenant's."""
        return await self._relay._send(core.get_task(task_id))

    def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Task]:
        """Tasks, newest first, every page: the iterator follows ``next_cursor`` as you read.

        ``since``/``until`` bound ``created_at`` (``until`` exclusive); ``tenant`` is for the admin token.
        """
        return self._relay._pages(
            core.list_tasks(status=status, kind=kind, tenant=tenant, since=since, until=until, page_size=page_size)
        )

    async def cancel(self, task_id: str) -> Task:
        """Cancel a queued, scheduled or running task; it ends ``cancelled``. Not retried.

        Raises:
            Conflict: The task has already ended.
        """
        return await self._relay._send(core.cancel_task(task_id))

    async def events(self, task_id: str, *, after_seq: int = 0, page_size: int | None = None) -> AsyncIterator[Event]:
        """A task's events with ``seq > after_seq``, oldest first, every page."""
        call: core.Call[Any] | None = core.task_events(task_id, after_seq=after_seq, page_size=page_size)
        while call is not None:
            page = await self._relay._send(call)
            for event in page.events:
                yield event
            call = core.next_events_page(call, page)

    async def deliveries(self, task_id: str) -> AttemptList:
        """Every delivery attempt of a task's events, on both channels, and its dead-lettered and replayed steps."""
        return await self._relay._send(core.task_deliveries(task_id))

    def stream(self, task_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """A task's events as they happen (Server-Sent Events), up to and including its final event.

        A dropped connection is resumed after the last event handed to you, so you get each event once, in
        ``seq`` order, none skipped; events already past are sent first. Retries follow the client's policy.
        """
        return self._relay._follow(
            sse.StreamFollow(task_id, after_seq=after_seq, max_bytes=self._relay._max_answer_bytes)
        )

    async def wait(self, task_id: str, *, timeout: float | None = None) -> Task:  # noqa: ASYNC109 -- as Relay's
        """Wait until a task has ended (succeeded, failed or cancelled) and return it.

        Follows its stream, and polls when the stream cannot be had.

        Raises:
            WaitTimeout: ``timeout`` seconds passed first (the task goes on).
            NotFound: No such task.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            follow = sse.StreamFollow(task_id, max_bytes=self._relay._max_answer_bytes)
            async for _ in self._relay._follow(follow, deadline=deadline):
                pass
        except (errors.NotFound, errors.Unauthorized, errors.Forbidden):
            raise
        except errors.RelayError as exc:
            if core.past(deadline):
                raise errors.WaitTimeout(task_id, timeout or 0) from exc
        while True:
            try:
                task = await self._relay._send(core.get_task(task_id), deadline=deadline)
            except (errors.TransportError, errors.RateLimited, errors.Unavailable) as exc:
                if core.past(deadline):
                    raise errors.WaitTimeout(task_id, timeout or 0) from exc
                raise
            if task.status.finished:
                return task
            if core.past(deadline):
                raise errors.WaitTimeout(task_id, timeout or 0)
            await asyncio.sleep(core.poll_wait_s(deadline))


class AsyncDeadLetters:
    """``relay.dead_letters``: webhooks that could not be delivered (a tenant's own, or with the admin token all)."""

    def __init__(self, relay: AsyncRelay) -> None:
        self._relay = relay

    def list(
        self,
        *,
        reason: DeadLetterReason | str | None = None,
        tenant: str | None = None,
        task_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[DeadLetter]:
        """Dead letters, newest first, every page (the iterator follows ``next_cursor``)."""
        return self._relay._pages(
            core.list_dead_letters(
                reason=reason, tenant=tenant, task_id=task_id, since=since, until=until, page_size=page_size
            )
        )

    async def get(self, dead_letter_id: str) -> DeadLetter:
        """One dead letter."""
        return await self._relay._send(core.get_dead_letter(dead_letter_id))

    async def replay(self, dead_letter_id: str) -> int:
        """Send one dead letter's event again (the same ``webhook-id``) on a fresh schedule; returns 1 (0 when it
        was being replayed already). Not retried."""
        return (await self._relay._send(core.replay_dead_letter(dead_letter_id))).replayed

    async def replay_bulk(
        self,
        *,
        dry_run: bool,
        reason: DeadLetterReason | str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ReplayResult:
        """Replay every dead letter that matches; with ``dry_run=True``, only count them (``replayed`` is 0).

        ``dry_run`` has no default on purpose: an empty filter matches every dead letter there is. A real replay is
        not retried (a retry could send twice); a dry run is.
        """
        return await self._relay._send(
            core.replay_dead_letters(dry_run=dry_run, reason=reason, tenant=tenant, since=since, until=until)
        )

    async def delete(self, dead_letter_id: str) -> None:
        """Delete one dead letter. Not retried."""
        await self._relay._send(core.delete_dead_letter(dead_letter_id))


class AsyncDestinations:
    """``relay.destinations``: where webhooks go (a tenant plus a URL's origin), their state and caps."""

    def __init__(self, relay: AsyncRelay) -> None:
        self._relay = relay

    def list(
        self, *, state: DestinationState | str | None = None, tenant: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[Destination]:
        """Destinations, worst first (open, paused, degraded, healthy; then most owed), every page."""
        return self._relay._pages(core.list_destinations(state=state, tenant=tenant, page_size=page_size))

    async def get(self, destination_id: str) -> Destination:
        """One destination."""
        return await self._relay._send(core.get_destination(destination_id))

    async def pause(self, destination_id: str) -> Destination:
        """Hold every webhook of the destination (none sent, none dead-lettered) until :meth:`resume`."""
        return await self._relay._send(core.destination_action(destination_id, "pause"))

    async def resume(self, destination_id: str) -> Destination:
        """Release a paused destination: its backlog drains within its caps, oldest first."""
        return await self._relay._send(core.destination_action(destination_id, "resume"))

    async def update(
        self,
        destination_id: str,
        *,
        max_in_flight: int | None = None,
        rate_per_s: float | msgspec.UnsetType | None = msgspec.UNSET,
    ) -> Destination:
        """Change a destination's caps; what you leave out stays as it is.

        Args:
            destination_id: The destination.
            max_in_flight: Attempts in flight to it at once, across the cluster (1..1000).
            rate_per_s: Attempts started per second at most; ``None`` removes the rate.
        """
        return await self._relay._send(
            core.update_destination(destination_id, max_in_flight=max_in_flight, rate_per_s=rate_per_s)
        )


class AsyncSigningSecrets:
    """``relay.signing_secret``: the secret that signs this tenant's webhooks."""

    def __init__(self, relay: AsyncRelay) -> None:
        self._relay = relay

    async def get(self) -> str:
        """The current secret (``whsec_...``)."""
        return (await self._relay._send(core.get_signing_secret())).secret

    async def rotate(self) -> str:
        """Make a new secret and return it; the old one keeps signing beside it for 24 h. Not retried."""
        return (await self._relay._send(core.rotate_signing_secret())).secret


class AsyncOps:
    """``relay.ops``: operator calls (``/v1/ops/*``), for a client made with the admin token."""

    def __init__(self, relay: AsyncRelay) -> None:
        self._relay = relay

    async def signing_secret(self) -> str:
        """The secret that signs operational events (``destination.opened``, ``destination.recovered``)."""
        return (await self._relay._send(core.ops_signing_secret())).secret

    async def cluster(self) -> ClusterView:
        """The storage's nodes, how Relay's partitions sit on them, the work owed on each, the processes alive."""
        return await self._relay._send(core.ops_cluster())

    async def acknowledge_store_loss(self) -> bool:
        """Acknowledge that the store lost its data, so that ``/ready`` answers 200 again. Not retried."""
        return (await self._relay._send(core.ops_acknowledge_store_loss())).acknowledged
