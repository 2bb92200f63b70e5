"""``relay tasks ...``: list tasks, show one and cancel one, over the HTTP API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import click
import msgspec
from relay_client.types import Task, TaskStatus
from rich.json import JSON
from rich.table import Column, Table
from rich.text import Text

from service.cli.client import ADMIN_TOKEN_ENV, API_KEY_ENV, ENCODER, Rfc3339, api_options, first, open_relay, page_size
from service.cli.render import attempts_table, fields_grid, print_list, shorten, stdout, time_text

# Tasks `relay tasks list` shows unless --limit says otherwise.
DEFAULT_LIST_LIMIT = 50
# Terminal widths from which the list adds when it finished; the outcome.
MEDIUM = 110
WIDE = 140
OUTCOME_WIDTH = 40
_STYLE = {
    TaskStatus.SCHEDULED: "blue",
    TaskStatus.QUEUED: "cyan",
    TaskStatus.RUNNING: "yellow",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.CANCELLED: "dim",
}

_token = api_options(
    [API_KEY_ENV, ADMIN_TOKEN_ENV], "A tenant's API key (its own tasks), or the admin token (every tenant's)."
)


def _outcome(task: Task) -> str:
    if task.error is not None:
        return shorten(f"{task.error.type}: {task.error.message}", OUTCOME_WIDTH)
    if task.status is TaskStatus.CANCELLED:
        return "cancelled"
    if task.status.finished:
        return shorten(msgspec.json.encode(task.result).decode(), OUTCOME_WIDTH)
    if task.progress is not None:
        return shorten(f"{task.progress.percent:g}% {task.progress.message or ''}".rstrip(), OUTCOME_WIDTH)
    if task.attempt > 1:
        return f"attempt {task.attempt} at {time_text(task.run_at)}"
    return "-"


def task_table(tasks: Sequence[Task], width: int) -> Table:
    """Ids whole on one line (they are what you copy); the other columns only where they fit."""
    columns = [
        Column("id", no_wrap=True, min_width=max(len(t.id) for t in tasks)),
        Column("status", no_wrap=True),
        Column("kind", overflow="fold", min_width=5),
        Column("created", no_wrap=True),
    ]
    if width >= MEDIUM:
        columns.append(Column("finished", no_wrap=True))
    if width >= WIDE:
        columns.append(Column("result / error / progress", overflow="fold", min_width=10))
    table = Table(*columns, box=None, padding=(0, 2, 0, 0), header_style="bold")
    for task in tasks:
        row: list[str | Text] = [
            Text(task.id),
            Text(task.status.value, style=_STYLE.get(task.status, "")),
            Text(task.kind),
            time_text(task.created_at),
        ]
        if width >= MEDIUM:
            row.append(time_text(task.finished_at))
        if width >= WIDE:
            row.append(Text(_outcome(task)))
        table.add_row(*row)
    return table


def _fields(task: Task) -> Table:
    progress = "-" if task.progress is None else f"{task.progress.percent:g}% {task.progress.message or ''}".rstrip()
    rows: list[tuple[str, str | Text]] = [
        ("id", task.id),
        ("kind", task.kind),
        ("status", Text(task.status.value, style=_STYLE.get(task.status, ""))),
        ("created", time_text(task.created_at)),
        ("started", time_text(task.started_at)),
        ("finished", time_text(task.finished_at)),
        ("run at", time_text(task.run_at)),
        ("attempt", str(task.attempt)),
        ("progress", progress),
        ("webhook", task.webhook.url if task.webhook else "-"),
        ("websocket", "yes" if task.websocket else "no"),
    ]
    if task.error is not None:
        rows.append(("error", f"{task.error.type}: {task.error.message}"))
    return fields_grid(rows)


@click.group()
def tasks() -> None:
    """List tasks, show one (its fields, result, events and every delivery attempt), cancel one."""


@tasks.command("list")
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]), help="Only tasks in this status.")
@click.option("--kind", metavar="KIND", help="Only tasks of this kind.")
@click.option("--tenant", metavar="T", help="Only this tenant's tasks (the admin token; a key sees its own anyway).")
@click.option("--since", type=Rfc3339(), help="Only tasks created at or after this time (UTC unless it has an offset).")
@click.option("--until", type=Rfc3339(), help="Only tasks created before this time (UTC unless it has an offset).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@_token
def list_tasks(
    status: str | None,
    kind: str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
    url: str,
    token: str,
) -> None:
    """List tasks, newest first, as a table or JSON lines."""
    with open_relay(url, token) as relay:
        found = relay.tasks.list(
            status=status, kind=kind, tenant=tenant, since=since, until=until, page_size=page_size(limit)
        )
        print_list(
            first(found, limit),
            as_json=as_json,
            table=lambda found: task_table(found, stdout().width),
            empty="No tasks.",
        )


@tasks.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the task's JSON as the API sends it.")
@_token
def show(task_id: str, as_json: bool, url: str, token: str) -> None:
    """Show one task: its fields, its result, its events and its delivery attempts, with the dead-lettered and
    replayed steps of its webhooks between them."""
    with open_relay(url, token) as relay:
        task = relay.tasks.get(task_id)
        if as_json:
            # Encoded again from what the client read: the same JSON, but for a field newer than this client.
            click.echo(ENCODER.encode(task).decode())
            return
        events = list(relay.tasks.events(task_id))
        deliveries = relay.tasks.deliveries(task_id)
    console = stdout()
    console.print(_fields(task))
    if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED) and task.error is None:
        console.print(Text("\nresult", style="bold"))
        console.print(JSON.from_data(msgspec.to_builtins(task.result)))
    console.print(Text("\nevents", style="bold"))
    if events:
        table = Table(Column("seq", justify="right"), "type", "at", Column("id", no_wrap=True))
        for event in events:
            table.add_row(str(event.seq), event.type.value, time_text(event.created_at), Text(event.id))
        console.print(table)
    else:
        console.print(Text("none retained", style="dim"))
    console.print(Text("\nattempts", style="bold"))
    named = {e.id: f"{e.seq} {e.type.value.removeprefix('task.')}" for e in events}
    if deliveries.attempts or deliveries.steps:
        console.print(attempts_table(deliveries.attempts, events=named, steps=deliveries.steps))
    else:
        console.print(Text("none", style="dim"))


@tasks.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the cancelled task's JSON.")
@_token
def cancel(task_id: str, as_json: bool, url: str, token: str) -> None:
    """Cancel a queued or running task: it ends `cancelled`, with a final task.cancelled event delivered like any.

    A running task's run is cancelled on the worker that holds it within a few seconds; a task that has already
    ended cannot be cancelled (exit status 1).
    """
    with open_relay(url, token) as relay:
        task = relay.tasks.cancel(task_id)
    if as_json:
        click.echo(ENCODER.encode(task).decode())
    else:
        click.echo(f"{task.id} {task.status.value}")
