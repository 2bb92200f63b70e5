"""``relay submit``: submit a task and, with ``--wait``, follow it to its end."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from relay_client import Relay
from relay_client.types import Event, EventType, Progress, Task, TaskStatus

from schemas.tasks import MAX_SCHEDULE_AHEAD_S
from service.cli.client import API_KEY_ENV, CommandFailed, Rfc3339, api_options, open_relay
from service.cli.follow import FollowError, NotRecovered, follow_task
from service.cli.render import pretty

# The most input read from a file or standard input (the API refuses bigger bodies anyway).
MAX_INPUT_FILE_BYTES = 16 * 1024 * 1024
# Seconds between two polls of a task's events under `relay submit --wait`.
DEFAULT_POLL_INTERVAL_S = 0.3
# Seconds without a final event after which --wait reads the task itself (its events may have expired).
TASK_CHECK_INTERVAL_S = 5.0


def _parse_json(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """JSON given inline, ``@path`` for a file's, ``-`` for standard input's."""
    if value is None:
        return None
    text: str | bytes = value
    if value == "-":
        text = sys.stdin.buffer.read(MAX_INPUT_FILE_BYTES + 1)
    elif value.startswith("@"):
        try:
            with Path(value[1:]).open("rb") as fh:
                text = fh.read(MAX_INPUT_FILE_BYTES + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror or exc}", ctx, param) from None
    if len(text) > MAX_INPUT_FILE_BYTES:
        raise click.BadParameter(f"more than {MAX_INPUT_FILE_BYTES} bytes", ctx, param)
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", ctx, param) from None


def _parse_events(ctx: click.Context, param: click.Parameter, value: str | None) -> list[EventType] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = {t.value: t for t in EventType}
    unknown = [name for name in names if name not in known and f"task.{name}" not in known]
    if not names or unknown:
        raise click.BadParameter(
            f"unknown event type {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}", ctx, param
        )
    return [known.get(name) or known[f"task.{name}"] for name in names]


@click.command()
@click.argument("kind")
@click.option(
    "--input",
    "input_",
    metavar="JSON|@FILE|-",
    callback=_parse_json,
    help="The task's input as JSON, @FILE to read it from a file, - from standard input [default: null].",
)
@click.option("--webhook", metavar="URL", help="Deliver the result to this URL as a signed webhook.")
@click.option(
    "--events",
    metavar="TYPE,...",
    callback=_parse_events,
    help="With --webhook: the event types it gets, comma-separated (e.g. task.progress,task.completed) "
    "[default: the final types].",
)
@click.option("--websocket/--no-websocket", default=False, show_default=True, help="Ask for WebSocket push.")
@click.option(
    "--delay",
    "delay_s",
    type=click.FloatRange(min=0, max=MAX_SCHEDULE_AHEAD_S),
    metavar="SECONDS",
    help="Start no earlier than this many seconds from now (the task waits `scheduled`).",
)
@click.option("--run-at", type=Rfc3339(), help="Start no earlier than this time (UTC unless it has an offset).")
@click.option("--wait", is_flag=True, help="Follow the task until it finishes; print its result (or error) as JSON.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --wait: give up (exit 1) after this many seconds [default: no limit].",
)
@api_options(API_KEY_ENV, "A tenant's API key.")
def submit(
    kind: str,
    input_: Any,
    webhook: str | None,
    events: list[EventType] | None,
    websocket: bool,
    wait: bool,
    timeout_s: float | None,
    delay_s: float | None,
    run_at: datetime | None,
    url: str,
    token: str,
) -> None:
    """Submit a task of KIND and print it as JSON.

    With --wait, progress goes to stderr and the result (or the error) to stdout as JSON; the exit
    status is 1 when the task failed.
    """
    if delay_s is not None and run_at is not None:
        raise click.UsageError("Give --delay or --run-at, not both.")
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait.")
    if events is not None and not webhook:
        raise click.UsageError("--events only applies with --webhook.")
    with open_relay(url, token) as relay:
        # Retried, with one Idempotency-Key, through 429, 503 and a lost answer: never a second task.
        task: Task = relay.tasks.submit(
            kind, input_, webhook=webhook, events=events, websocket=websocket, run_at=run_at, delay_s=delay_s
        )
        if not wait:
            click.echo(pretty(task))
            return
        click.echo(f"{task.id} {task.status.value}", err=True)
        task = wait_for_task(relay, url, task, timeout_s=timeout_s)
    if task.status is TaskStatus.FAILED:
        click.echo(pretty(task.error))
        raise CommandFailed(f"task {task.id} failed: {task.error.message if task.error else 'no error given'}")
    click.echo(pretty(task.result))


def wait_for_task(
    relay: Relay,
    url: str,
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
            follow_task(url, task.id, task.ws_token, on_event=_report_progress, deadline=deadline)
        except TimeoutError:
            raise CommandFailed(f"task {task.id} still not finished after {timeout_s:g} s") from None
        except NotRecovered:
            pass
        except FollowError as exc:
            click.echo(f"relay: {exc}; polling instead", err=True)
            return _poll_task(relay, task, deadline=deadline, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
        return relay.tasks.get(task.id)
    return _poll_task(relay, task, deadline=deadline, timeout_s=timeout_s, poll_interval_s=poll_interval_s)


def _poll_task(
    relay: Relay, task: Task, *, deadline: float | None, timeout_s: float | None, poll_interval_s: float
) -> Task:
    after_seq = 0
    final_seen = False
    checked_at = time.monotonic()
    while not task.status.finished:
        _pause(task, deadline, poll_interval_s, timeout_s)
        if not final_seen:
            for event in relay.tasks.events(task.id, after_seq=after_seq):
                after_seq = event.seq
                final_seen = final_seen or event.type.final
                _report_progress(event)
        # Without a final event for a while the events may have expired: read the task itself.
        if final_seen or time.monotonic() - checked_at >= TASK_CHECK_INTERVAL_S:
            task = relay.tasks.get(task.id)
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


def _report_progress(event: Event) -> None:
    """Progress and retries on stderr, from an event of the socket or of the events list."""
    if event.type is EventType.RETRYING and isinstance(event.data, dict):
        error = event.data.get("error") or {}
        click.echo(
            f"retrying: attempt {event.data.get('attempt')} at {event.data.get('run_at')} "
            f"({error.get('type')}: {error.get('message')})",
            err=True,
        )
        return
    if event.type is not EventType.PROGRESS:
        return
    try:
        progress = msgspec.convert(event.data, Progress)
    except msgspec.ValidationError:
        return
    click.echo(f"{progress.percent:5.1f}% {progress.message or ''}".rstrip(), err=True)
