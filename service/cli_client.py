"""The client side of the ``relay`` console script: ``relay dlq ...`` and ``relay submit``.

Both talk to a running Relay API over HTTP, one ``httpx.Client`` per invocation. What an operator
can act on (an unreachable API, an error answer, a missing id, a task that failed under ``--wait``)
ends with one line on stderr and exit status 1; bad arguments are click usage errors (exit status 2).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote

import click
import httpx
import msgspec
from rich.console import Console
from rich.json import JSON
from rich.progress import Progress
from rich.table import Column, Table
from rich.text import Text

from schemas.api import ErrorBody
from schemas.dead_letters import DeadLetter, DeadLetterPage, DeadLetterReason, ReplayFilter, ReplayResult
from schemas.deliveries import Attempt, AttemptList
from schemas.events import Event, EventList, EventType
from schemas.tasks import Progress as TaskProgress
from schemas.tasks import Task, TaskStatus, TaskSubmission, Webhook
from service.follow import FollowError, NotRecovered, follow_task
from service.settings import DEFAULT_URL

__all__ = ["ApiError", "ApiUnreachable", "CommandFailed", "dlq", "submit", "wait_for_task"]

# Seconds one API call may take.
DEFAULT_HTTP_TIMEOUT_S = 30.0
# Dead letters `relay dlq list` shows unless --limit says otherwise.
DEFAULT_LIST_LIMIT = 100
# Dead letters asked for per page.
PAGE_SIZE = 100
# Seconds between two polls of a task's events under `relay submit --wait`.
DEFAULT_POLL_INTERVAL_S = 0.3
# Seconds without a final event after which --wait reads the task itself (its events may have expired).
TASK_CHECK_INTERVAL_S = 5.0
# Characters of a last status/error the list table keeps.
LAST_OUTCOME_WIDTH = 40
# Columns rich may use when stdout is not a terminal, so piped rows keep to one line each.
PIPE_WIDTH = 1000

URL_ENV = "RELAY_URL"
ADMIN_TOKEN_ENV = "RELAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
API_KEY_ENV = "RELAY_API_KEY"

_ENCODER = msgspec.json.Encoder()
_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(click.ClickException):
    """A failure told in one line on stderr (``relay: ...``), exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"relay: {self.format_message()}", file=file, err=file is None)


class ApiUnreachable(CommandFailed):
    """No answer from the API: refused, unresolvable, timed out."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the API at {url} ({reason})")
        self.url = url
        self.reason = reason


class ApiError(CommandFailed):
    """The API answered with an error status; ``detail`` is its human-readable reason."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status_code})")
        self.status_code = status_code
        self.detail = detail


# --- HTTP ---------------------------------------------------------------------------------------


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=DEFAULT_HTTP_TIMEOUT_S)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; a transport failure or a non-2xx answer becomes a `CommandFailed`."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ApiUnreachable(str(client.base_url).rstrip("/"), _transport_reason(exc)) from exc
    if not response.is_success:
        raise _api_error(response)
    return response


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {DEFAULT_HTTP_TIMEOUT_S:g} s"
    lines = str(exc).strip().splitlines()
    text = _ERRNO_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return text[:1].lower() + text[1:]


def _api_error(response: httpx.Response) -> ApiError:
    try:
        detail = msgspec.json.decode(response.content, type=ErrorBody).detail
    except msgspec.DecodeError:
        detail = response.text.strip()[:200] or response.reason_phrase
    return ApiError(response.status_code, detail)


def _decode(response: httpx.Response, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError included
        request = response.request
        raise CommandFailed(f"unexpected answer to {request.method} {request.url.path}: {exc}") from exc


def _dead_letter_path(dead_letter_id: str) -> str:
    return f"/v1/dead-letters/{quote(dead_letter_id, safe='')}"


def _task_path(task_id: str) -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}"


class Page(Protocol[T_co]):
    """One page of a list of the API."""

    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


def iter_dead_letters(client: httpx.Client, filters: Mapping[str, object], limit: int | None) -> Iterator[DeadLetter]:
    """Dead letters matching ``filters``, newest first, following ``next_cursor`` up to ``limit`` (None: all)."""
    return iter_pages(client, "/v1/dead-letters", DeadLetterPage, filters, limit)


def iter_pages(
    client: httpx.Client, path: str, page_type: type[Page[T_co]], filters: Mapping[str, object], limit: int | None
) -> Iterator[T_co]:
    """The items of the list at ``path`` that match ``filters``, following ``next_cursor`` up to ``limit`` (None:
    all)."""
    query = {name: value for name, value in msgspec.to_builtins(filters).items() if value is not None}
    cursor: str | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        params = {**query, "limit": PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)}
        if cursor is not None:
            params["cursor"] = cursor
        page = _decode(_call(client, "GET", path, params=params), page_type)
        items = page.items if remaining is None else page.items[:remaining]
        yield from items
        if remaining is not None:
            remaining -= len(items)
        cursor = page.next_cursor
        if cursor is None or not items:
            return


# --- options ------------------------------------------------------------------------------------


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = httpx.URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{value!r} is not an absolute http(s) URL", ctx, param)
    return value.rstrip("/")


def _api_options(token_envvar: str, token_help: str) -> Callable[[F], F]:
    """``--url`` and ``--token``, which every client command takes."""

    def decorate(command: F) -> F:
        command = click.option(
            "--token", envvar=token_envvar, required=True, show_envvar=True, metavar="TOKEN", help=token_help
        )(command)
        return click.option(
            "--url",
            envvar=URL_ENV,
            default=DEFAULT_URL,
            show_default=True,
            show_envvar=True,
            metavar="URL",
            callback=_check_url,
            help="Base URL of the Relay API.",
        )(command)

    return decorate


class Rfc3339(click.ParamType[datetime]):
    """An RFC 3339 time, returned in UTC; one without an offset is taken as UTC."""

    name = "RFC3339"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an RFC 3339 time such as 2025-01-31T12:00:00Z", param, ctx)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_operator = _api_options(ADMIN_TOKEN_ENV, "Operator (admin) token, or a tenant's API key for its own dead letters.")
_ids_argument = click.argument("ids", nargs=-1, metavar="[ID]...")
_reason_option = click.option(
    "--reason", type=click.Choice([r.value for r in DeadLetterReason]), help="Only dead letters with this reason."
)
_tenant_option = click.option("--tenant", metavar="T", help="Only this tenant's dead letters.")
_since_option = click.option(
    "--since", type=Rfc3339(), help="Only dead letters that died at or after this time (UTC unless it has an offset)."
)
_until_option = click.option(
    "--until", type=Rfc3339(), help="Only dead letters that died before this time (UTC unless it has an offset)."
)


def _check_selection(ids: Sequence[str], all_: bool, filters: Mapping[str, object]) -> None:
    """IDs or --all, never both; filters only narrow --all."""
    if ids and all_:
        raise click.UsageError("Give dead letter IDs or --all, not both.")
    if not ids and not all_:
        raise click.UsageError("Give one or more dead letter IDs, or --all.")
    given = [f"--{name.replace('_', '-')}" for name, value in filters.items() if value not in (None, False)]
    if ids and given:
        raise click.UsageError(f"{', '.join(given)} only apply with --all.")


# --- output -------------------------------------------------------------------------------------


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _last_outcome(letter: DeadLetter) -> str:
    parts = [str(letter.last_status_code)] if letter.last_status_code is not None else []
    if letter.last_error:
        parts.append(letter.last_error)
    return _shorten(": ".join(parts), LAST_OUTCOME_WIDTH) if parts else "-"


def _stdout() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def print_list(items: Iterable[T], *, as_json: bool, table: Callable[[list[T]], Table], empty: str) -> None:
    """Every item as a JSON line (as it comes, page by page), or all of them as one table; ``empty`` when none."""
    if as_json:
        for item in items:
            click.echo(_ENCODER.encode(item).decode())
        return
    found = list(items)
    if found:
        _stdout().print(table(found))
    else:
        click.echo(empty)


def _pretty(value: object) -> str:
    return msgspec.json.format(_ENCODER.encode(value), indent=2).decode()


def _dead_letter_table(letters: Sequence[DeadLetter]) -> Table:
    table = Table(
        Column("id", overflow="fold"),
        Column("tenant", overflow="fold"),
        Column("task", overflow="fold"),
        Column("reason", overflow="fold"),
        Column("attempts", justify="right"),
        Column("last status/error", overflow="fold"),
        Column("dead at", overflow="fold"),
        Column("replays", justify="right"),
    )
    for letter in letters:
        table.add_row(
            Text(letter.id),
            Text(letter.tenant),
            Text(letter.task_id),
            letter.reason.value,
            str(letter.attempts),
            Text(_last_outcome(letter)),
            _time(letter.dead_at),
            str(letter.replays),
        )
    return table


def _dead_letter_fields(letter: DeadLetter) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = "-" if letter.last_status_code is None else str(letter.last_status_code)
    for name, value in (
        ("id", letter.id),
        ("tenant", letter.tenant),
        ("task", letter.task_id),
        ("url", letter.url),
        ("reason", letter.reason.value),
        ("attempts", str(letter.attempts)),
        ("last status", status),
        ("last error", letter.last_error or "-"),
        ("first attempt", _time(letter.first_attempt_at)),
        ("dead at", _time(letter.dead_at)),
        ("replays", str(letter.replays)),
    ):
        grid.add_row(name, Text(value))
    return grid


def _attempts_table(attempts: Sequence[Attempt]) -> Table:
    table = Table(
        Column("#", justify="right"),
        "channel",
        "at",
        "outcome",
        Column("status", justify="right"),
        "error",
        Column("ms", justify="right"),
    )
    for attempt in attempts:
        table.add_row(
            str(attempt.attempt),
            attempt.channel.value,
            _time(attempt.at),
            attempt.outcome.value,
            "-" if attempt.status_code is None else str(attempt.status_code),
            Text(attempt.error or "-"),
            f"{attempt.duration_ms:.0f}",
        )
    return table


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A transient progress bar on a terminal's stderr for more than one item; yields ``advance``."""
    console = Console(stderr=True)
    if total <= 1 or not console.is_terminal:
        yield lambda: None
        return
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as progress:
        bar = progress.add_task(description, total=total)
        yield lambda: progress.advance(bar)


def _for_each(ids: Sequence[str], action: Callable[[str], None], description: str) -> int:
    """Run ``action`` on every id and return how many succeeded.

    An error answer for one id is reported and the others go on; an unreachable API stops them all.
    """
    done = 0
    with _progress(len(ids), description) as advance:
        for item in ids:
            try:
                action(item)
            except ApiError as exc:
                click.echo(f"relay: {item}: {exc.detail} (HTTP {exc.status_code})", err=True)
            else:
                done += 1
            advance()
    return done


def _exit_if_short(done: int, total: int) -> None:
    if done < total:
        click.get_current_context().exit(1)


# --- relay dlq ----------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters: webhook events that could not be delivered."""


@dlq.command("list")
@_reason_option
@_tenant_option
@click.option("--task-id", metavar="ID", help="Only this task's dead letters.")
@_since_option
@_until_option
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@_operator
def list_dead_letters(
    reason: str | None,
    tenant: str | None,
    task_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
    url: str,
    token: str,
) -> None:
    """List dead letters, newest first, as a table or JSON lines."""
    filters = {"reason": reason, "tenant": tenant, "task_id": task_id, "since": since, "until": until}
    with _client(url, token) as client:
        print_list(
            iter_dead_letters(client, filters, limit),
            as_json=as_json,
            table=_dead_letter_table,
            empty="No dead letters.",
        )


@dlq.command()
@click.argument("dead_letter_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the dead letter's JSON as the API sends it.")
@_operator
def show(dead_letter_id: str, as_json: bool, url: str, token: str) -> None:
    """Show one dead letter: its fields, its event and its delivery attempts.

    Every attempt is listed when the token may read the task's deliveries (the owning tenant's key);
    otherwise the dead letter's own count, last status and last error sum them up.
    """
    with _client(url, token) as client:
        response = _call(client, "GET", _dead_letter_path(dead_letter_id))
        if as_json:
            click.echo(response.text)
            return
        letter = _decode(response, DeadLetter)
        attempts = _attempts_of(client, letter)
    console = _stdout()
    console.print(_dead_letter_fields(letter))
    console.print(Text("\nevent", style="bold"))
    console.print(JSON.from_data(msgspec.to_builtins(letter.event)))
    if attempts is None:
        console.print(
            Text("\nPer-attempt log not readable with this token; see attempts and last status above.", style="dim")
        )
    else:
        console.print(Text("\nattempts", style="bold"))
        console.print(_attempts_table(attempts))


def _attempts_of(client: httpx.Client, letter: DeadLetter) -> list[Attempt] | None:
    """The attempts at the dead letter's event, or None when this token may not read them."""
    try:
        response = _call(client, "GET", f"{_task_path(letter.task_id)}/deliveries")
        attempts = _decode(response, AttemptList).attempts
    except CommandFailed:
        return None
    return [attempt for attempt in attempts if attempt.event_id == letter.event.id]


@dlq.command()
@_ids_argument
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter that matches the filters.")
@_reason_option
@_tenant_option
@_since_option
@_until_option
@click.option("--dry-run", is_flag=True, help="With --all: count what would be replayed, send nothing.")
@_operator
def replay(
    ids: tuple[str, ...],
    all_: bool,
    reason: str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    dry_run: bool,
    url: str,
    token: str,
) -> None:
    """Replay dead letters: the given IDs, or --all that match the filters.

    A replay sends the same event (same webhook-id) on a fresh retry schedule. --all lists the matching
    dead letters, then replays them one by one with a progress bar on stderr; --all --dry-run only counts.
    """
    _check_selection(
        ids, all_, {"reason": reason, "tenant": tenant, "since": since, "until": until, "dry_run": dry_run}
    )
    with _client(url, token) as client:
        if all_ and dry_run:
            body = ReplayFilter(
                reason=DeadLetterReason(reason) if reason else None,
                tenant=tenant,
                since=since,
                until=until,
                dry_run=True,
            )
            _replay_all(client, body)
            return
        if all_:
            # One by one rather than the bulk endpoint, so that a long replay shows its progress.
            filters = {"reason": reason, "tenant": tenant, "since": since, "until": until}
            ids = tuple(letter.id for letter in iter_dead_letters(client, filters, None))
        done = _for_each(ids, lambda item: _replay_one(client, item), "Replaying")
    click.echo(f"replayed {done} of {len(ids)}")
    _exit_if_short(done, len(ids))


def _replay_one(client: httpx.Client, dead_letter_id: str) -> None:
    _call(client, "POST", f"{_dead_letter_path(dead_letter_id)}/replay")


def _replay_all(client: httpx.Client, body: ReplayFilter) -> None:
    payload = {name: value for name, value in msgspec.to_builtins(body).items() if value is not None}
    result = _decode(_call(client, "POST", "/v1/dead-letters/replay", json=payload), ReplayResult)
    if body.dry_run:
        click.echo(f"dry run: {result.matched} would be replayed")
    else:
        click.echo(f"matched {result.matched}, replayed {result.replayed}")


@dlq.command()
@_ids_argument
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter that matches the filters.")
@_reason_option
@_tenant_option
@_operator
def purge(ids: tuple[str, ...], all_: bool, reason: str | None, tenant: str | None, url: str, token: str) -> None:
    """Delete dead letters for good: the given IDs, or --all that match the filters.

    With --all the matching dead letters are listed first, then deleted one by one.
    """
    _check_selection(ids, all_, {"reason": reason, "tenant": tenant})
    with _client(url, token) as client:
        if all_:
            ids = tuple(letter.id for letter in iter_dead_letters(client, {"reason": reason, "tenant": tenant}, None))
        done = _for_each(ids, lambda item: _delete_one(client, item), "Deleting")
    click.echo(f"deleted {done} of {len(ids)}")
    _exit_if_short(done, len(ids))


def _delete_one(client: httpx.Client, dead_letter_id: str) -> None:
    _call(client, "DELETE", _dead_letter_path(dead_letter_id))


# --- relay submit -------------------------------------------------------------------------------


def _parse_json(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx, param) from None


@click.command()
@click.argument("kind")
@click.option(
    "--input", "input_", metavar="JSON", callback=_parse_json, help="The task's input as JSON [default: null]."
)
@click.option("--webhook", metavar="URL", help="Deliver the result to this URL as a signed webhook.")
@click.option("--websocket/--no-websocket", default=False, show_default=True, help="Ask for WebSocket push.")
@click.option("--wait", is_flag=True, help="Follow the task until it finishes; print its result (or error) as JSON.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --wait: give up (exit 1) after this many seconds [default: no limit].",
)
@_api_options(API_KEY_ENV, "A tenant's API key.")
def submit(
    kind: str,
    input_: Any,
    webhook: str | None,
    websocket: bool,
    wait: bool,
    timeout_s: float | None,
    url: str,
    token: str,
) -> None:
    """Submit a task of KIND and print it as JSON.

    With --wait, progress goes to stderr and the result (or the error) to stdout as JSON; the exit
    status is 1 when the task failed.
    """
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait.")
    body = TaskSubmission(
        kind=kind, input=input_, webhook=Webhook(url=webhook) if webhook else None, websocket=websocket
    )
    with _client(url, token) as client:
        response = _call(
            client, "POST", "/v1/tasks", content=_ENCODER.encode(body), headers={"content-type": "application/json"}
        )
        task = _decode(response, Task)
        if not wait:
            click.echo(_pretty(task))
            return
        click.echo(f"{task.id} {task.status.value}", err=True)
        task = wait_for_task(client, task, timeout_s=timeout_s)
    if task.status is TaskStatus.FAILED:
        click.echo(_pretty(task.error))
        raise CommandFailed(f"task {task.id} failed: {task.error.message if task.error else 'no error given'}")
    click.echo(_pretty(task.result))


def wait_for_task(
    client: httpx.Client,
    task: Task,
    *,
    timeout_s: float | None = None,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
) -> Task:
    """Follow ``task`` until it has finished and return it as the API then tells it.

    Follows over the WebSocket (progress to stderr as it comes); reads the task over HTTP when retention
    lost some of its events, and polls ``GET /v1/tasks/{id}/events`` when no socket can be opened at all.

    Raises:
        CommandFailed: the API failed, or ``timeout_s`` passed first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if task.ws_token is not None:
        try:
            follow_task(str(client.base_url), task.id, task.ws_token, on_event=_report_progress, deadline=deadline)
        except TimeoutError:
            raise CommandFailed(f"task {task.id} still not finished after {timeout_s:g} s") from None
        except NotRecovered:
            pass
        except FollowError as exc:
            click.echo(f"relay: {exc}; polling instead", err=True)
            return _poll_task(client, task, deadline=deadline, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
        return _decode(_call(client, "GET", _task_path(task.id)), Task)
    return _poll_task(client, task, deadline=deadline, timeout_s=timeout_s, poll_interval_s=poll_interval_s)


def _poll_task(
    client: httpx.Client, task: Task, *, deadline: float | None, timeout_s: float | None, poll_interval_s: float
) -> Task:
    after_seq = 0
    final_seen = False
    checked_at = time.monotonic()
    while not task.status.finished:
        _pause(task, deadline, poll_interval_s, timeout_s)
        if not final_seen:
            for event in _events_after(client, task.id, after_seq):
                after_seq = event.seq
                final_seen = final_seen or event.type.final
                _report_progress(event)
        # Without a final event for a while the events may have expired: read the task itself.
        if final_seen or time.monotonic() - checked_at >= TASK_CHECK_INTERVAL_S:
            task = _decode(_call(client, "GET", _task_path(task.id)), Task)
            checked_at = time.monotonic()
    return task


def _pause(task: Task, deadline: float | None, interval_s: float, timeout_s: float | None) -> None:
    if deadline is None:
        time.sleep(interval_s)
        return
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise CommandFailed(f"task {task.id} still not finished after {timeout_s:g} s")
    time.sleep(min(interval_s, left_s))


def _events_after(client: httpx.Client, task_id: str, after_seq: int) -> list[Event]:
    response = _call(client, "GET", f"{_task_path(task_id)}/events", params={"after_seq": after_seq})
    return _decode(response, EventList).events


def _report_progress(event: Event) -> None:
    if event.type is not EventType.PROGRESS:
        return
    try:
        progress = msgspec.convert(event.data, TaskProgress)
    except msgspec.ValidationError:
        return
    click.echo(f"{progress.percent:5.1f}% {progress.message or ''}".rstrip(), err=True)
