"""Talking to a running Relay API from the ``relay`` client commands: the client, its options and its errors.

One ``httpx.Client`` per invocation. What an operator can act on (an unreachable API, an error answer, a
missing id) ends with one line on stderr and exit status 1; bad arguments are click usage errors (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote

import click
import httpx
import msgspec

from schemas.api import ErrorBody
from schemas.events import Event, EventList
from service.settings import DEFAULT_URL

# Seconds one API call may take.
DEFAULT_HTTP_TIMEOUT_S = 30.0
# Items asked for per page.
PAGE_SIZE = 100

URL_ENV = "RELAY_URL"
ADMIN_TOKEN_ENV = "RELAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
API_KEY_ENV = "RELAY_API_KEY"

ENCODER = msgspec.json.Encoder()
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
        super().__init__(f"cannot reach the API at {url} ({reason}); another API: --url or RELAY_URL")
        self.url = url
        self.reason = reason


class ApiError(CommandFailed):
    """The API answered with an error status; ``detail`` is its human-readable reason."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status_code})")
        self.status_code = status_code
        self.detail = detail


def client(url: str, token: str) -> httpx.Client:
    """A client of the API at ``url`` that sends ``token`` as its bearer token."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=DEFAULT_HTTP_TIMEOUT_S)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; a transport failure or a non-2xx answer becomes a `CommandFailed`."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ApiUnreachable(str(client.base_url).rstrip("/"), _transport_reason(exc)) from exc
    if not response.is_success:
        raise api_error(response)
    return response


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {DEFAULT_HTTP_TIMEOUT_S:g} s"
    lines = str(exc).strip().splitlines()
    text = _ERRNO_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return text[:1].lower() + text[1:]


def api_error(response: httpx.Response) -> ApiError:
    try:
        detail = msgspec.json.decode(response.content, type=ErrorBody).detail
    except msgspec.DecodeError:
        detail = response.text.strip()[:200] or response.reason_phrase
    return ApiError(response.status_code, detail)


def decode(response: httpx.Response, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError included
        request = response.request
        raise CommandFailed(f"unexpected answer to {request.method} {request.url.path}: {exc}") from exc


def resource_path(collection: str, item_id: str) -> str:
    """``/v1/{collection}/{id}``, the id quoted whole (a ``/`` in it stays part of the id)."""
    return f"/v1/{collection}/{quote(item_id, safe='')}"


class Page(Protocol[T_co]):
    """One page of a list of the API."""

    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


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
        page = decode(call(client, "GET", path, params=params), page_type)
        items = page.items if remaining is None else page.items[:remaining]
        yield from items
        if remaining is not None:
            remaining -= len(items)
        cursor = page.next_cursor
        if cursor is None:  # a page may be empty and still go on: it looked at as many entries as a page may
            return


def iter_events(client: httpx.Client, task_id: str, after_seq: int = 0) -> Iterator[Event]:
    """A task's retained events with ``seq > after_seq``, oldest first, following ``next_after_seq``."""
    path = f"{resource_path('tasks', task_id)}/events"
    next_after: int | None = after_seq
    while next_after is not None:
        page = decode(call(client, "GET", path, params={"after_seq": next_after}), EventList)
        yield from page.events
        if not page.events:
            return
        next_after = page.next_after_seq


def check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = httpx.URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{value!r} is not an absolute http(s) URL", ctx, param)
    return value.rstrip("/")


def api_options(token_envvar: str | Sequence[str], token_help: str, *, token_required: bool = True) -> Callable[[F], F]:
    """``--url`` and ``--token``, which every client command takes (``relay receive`` only when it fetches)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--token",
            envvar=[token_envvar] if isinstance(token_envvar, str) else list(token_envvar),
            required=token_required,
            show_envvar=True,
            metavar="TOKEN",
            help=token_help,
        )(command)
        return click.option(
            "--url",
            envvar=URL_ENV,
            default=DEFAULT_URL,
            show_default=True,
            show_envvar=True,
            metavar="URL",
            callback=check_url,
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
