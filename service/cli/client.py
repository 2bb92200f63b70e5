"""How the ``relay`` client commands reach a running Relay: one ``relay_client.Relay`` per invocation, its options,
and its errors told in one line.

What an operator can act on (an unreachable API, an error answer, a missing id) ends with one line on stderr and exit
status 1; bad arguments are click usage errors (exit 2). The library's errors become those lines here, in
:func:`failure`, and nowhere else.

Retries. The library retries what is safe to repeat (reads, and submissions, whose ``Idempotency-Key`` makes a
repeat return the first task) on 429, 503 and answers that never came; the commands keep that, because it is what
turns a Redis failover or a rate limit into a short wait instead of a failed ``relay submit`` whose task may or may
not exist. Each retry is told on stderr (``relay: ... (HTTP 503); trying again in 1.2 s``), so a wait is never
silent, and they stop after ``DEFAULT_RETRY_DEADLINE_S`` (Ctrl-C stops them sooner). A URL where nothing listens is
not retried (``connect=False``): nothing was sent, and the person at the terminal learns at once that the API is not
there. Cancels, replays, deletes and other changes are never retried (the library's rule).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click
import httpx
import msgspec
from relay_client import ApiError, Relay, RelayError, Retries, TransportError, UnexpectedAnswer

from service.settings import DEFAULT_URL

# Seconds one API call may take (to connect, and for its answer).
DEFAULT_HTTP_TIMEOUT_S = 30.0
# Seconds after a call's first attempt during which a failure worth retrying is retried (each retry told on stderr).
DEFAULT_RETRY_DEADLINE_S = 30.0
# Items asked for per page.
PAGE_SIZE = 100

URL_ENV = "RELAY_URL"
ADMIN_TOKEN_ENV = "RELAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
API_KEY_ENV = "RELAY_API_KEY"

ENCODER = msgspec.json.Encoder()
_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class CommandFailed(click.ClickException):
    """A failure told in one line on stderr (``relay: ...``), exit status 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"relay: {self.format_message()}", file=file, err=file is None)


@contextmanager
def open_relay(url: str, token: str) -> Iterator[Relay]:
    """The client of the API at ``url`` for one invocation, sending ``token`` as its bearer token; a library error
    raised while it is open ends the command with its one line (see :func:`failure`)."""
    retries = Retries(deadline_s=DEFAULT_RETRY_DEADLINE_S, connect=False, on_retry=_tell_retry(url))
    try:
        with Relay(url, token, timeout=DEFAULT_HTTP_TIMEOUT_S, retries=retries) as relay:
            yield relay
    except RelayError as exc:
        raise failure(exc, url) from exc


def failure(exc: RelayError, url: str) -> CommandFailed:
    """The command's one line for one of the library's errors."""
    return CommandFailed(describe(exc, url))


def describe(exc: RelayError, url: str) -> str:
    """What went wrong, for a person: Relay's ``detail`` with the status, or why the API at ``url`` did not answer."""
    if isinstance(exc, ApiError):
        return answered(exc)
    if isinstance(exc, TransportError):
        return f"cannot reach the API at {url} ({_transport_reason(exc)}); another API: --url or RELAY_URL"
    if isinstance(exc, UnexpectedAnswer):
        return f"unexpected answer to {exc}"
    return str(exc)


def answered(exc: ApiError) -> str:
    """An error answer, for a person: Relay's ``detail`` and the status."""
    return f"{exc.detail} (HTTP {exc.status})"


def _transport_reason(exc: TransportError) -> str:
    cause = exc.__cause__  # the library raises its transport errors from httpx's
    if isinstance(cause, httpx.TimeoutException):
        return f"no answer within {DEFAULT_HTTP_TIMEOUT_S:g} s"
    lines = str(cause if cause is not None else exc).strip().splitlines()
    text = _ERRNO_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return text[:1].lower() + text[1:]


def _tell_retry(url: str) -> Callable[[RelayError, float], None]:
    def tell(error: RelayError, delay_s: float) -> None:
        what = (
            f"no answer from the API at {url} ({_transport_reason(error)})"
            if isinstance(error, TransportError)
            else describe(error, url)
        )
        click.echo(f"relay: {what}; trying again in {delay_s:.1f} s", err=True)

    return tell


def page_size(limit: int | None) -> int:
    """Items to ask for per page when at most ``limit`` (None: all) are wanted."""
    return PAGE_SIZE if limit is None else min(PAGE_SIZE, limit)


def first(items: Iterable[T], limit: int | None) -> Iterator[T]:
    """The first ``limit`` of ``items`` (None: all), asking for no page past them."""
    return iter(items) if limit is None else itertools.islice(items, limit)


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
