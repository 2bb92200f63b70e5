"""``relay dlq ...``: inspect, replay and purge dead letters over the HTTP API."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import click
import msgspec
from relay_client import NotFound, Relay
from relay_client.types import AttemptList, DeadLetter, DeadLetterReason
from rich.json import JSON
from rich.table import Column, Table
from rich.text import Text

from service.cli.client import ADMIN_TOKEN_ENV, ENCODER, Rfc3339, api_options, first, open_relay, page_size
from service.cli.render import (
    attempts_table,
    exit_if_short,
    fields_grid,
    for_each,
    print_list,
    shorten,
    stdout,
    time_text,
)

# Dead letters `relay dlq list` shows unless --limit says otherwise.
DEFAULT_LIST_LIMIT = 100
# Characters of a last status/error the list table keeps.
LAST_OUTCOME_WIDTH = 40
# Matches `relay dlq purge --all` lists before it asks; the rest are counted.
PURGE_LISTED = 20
# Terminal widths from which the list adds when it died; the tenant and attempts; the last outcome and replays.
MEDIUM = 100
WIDE = 120
WIDEST = 140

_operator = api_options(ADMIN_TOKEN_ENV, "Operator (admin) token, or a tenant's API key for its own dead letters.")
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


def iter_dead_letters(relay: Relay, filters: Mapping[str, Any], limit: int | None) -> Iterator[DeadLetter]:
    """Dead letters matching ``filters``, newest first, following ``next_cursor`` up to ``limit`` (None: all)."""
    return first(relay.dead_letters.list(**filters, page_size=page_size(limit)), limit)


def _check_selection(ids: Sequence[str], all_: bool, filters: Mapping[str, object]) -> None:
    """IDs or --all, never both; filters only narrow --all."""
    if ids and all_:
        raise click.UsageError("Give dead letter IDs or --all, not both.")
    if not ids and not all_:
        raise click.UsageError("Give one or more dead letter IDs, or --all.")
    given = [f"--{name.replace('_', '-')}" for name, value in filters.items() if value not in (None, False)]
    if ids and given:
        raise click.UsageError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} with --all.")


def _last_outcome(letter: DeadLetter) -> str:
    parts = [str(letter.last_status_code)] if letter.last_status_code is not None else []
    if letter.last_error:
        parts.append(letter.last_error)
    return shorten(": ".join(parts), LAST_OUTCOME_WIDTH) if parts else "-"


def dead_letter_table(letters: Sequence[DeadLetter], width: int) -> Table:
    """Ids whole on one line (they are what you copy); the other columns only where they fit."""
    id_width = max(len(letter.id) for letter in letters)
    task_width = max(len(letter.task_id) for letter in letters)
    columns = [
        Column("id", no_wrap=True, min_width=id_width),
        Column("task", no_wrap=True, min_width=task_width),
        Column("reason", overflow="fold"),
    ]
    if width >= MEDIUM:
        columns.append(Column("dead at", no_wrap=True))
    if width >= WIDE:
        columns += [Column("attempts", justify="right", no_wrap=True), Column("tenant", overflow="fold", min_width=6)]
    if width >= WIDEST:
        columns += [
            Column("last status/error", overflow="fold", min_width=10),
            Column("replays", justify="right", no_wrap=True),
        ]
    table = Table(*columns, box=None, padding=(0, 2, 0, 0), header_style="bold")
    for letter in letters:
        row: list[str | Text] = [Text(letter.id), Text(letter.task_id), letter.reason.value]
        if width >= MEDIUM:
            row.append(time_text(letter.dead_at))
        if width >= WIDE:
            row += [str(letter.attempts), Text(letter.tenant)]
        if width >= WIDEST:
            row += [Text(_last_outcome(letter)), str(letter.replays)]
        table.add_row(*row)
    return table


def _dead_letter_fields(letter: DeadLetter) -> Table:
    status = "-" if letter.last_status_code is None else str(letter.last_status_code)
    return fields_grid(
        (
            ("id", letter.id),
            ("tenant", letter.tenant),
            ("task", letter.task_id),
            ("url", letter.url),
            ("reason", letter.reason.value),
            ("attempts", str(letter.attempts)),
            ("last status", status),
            ("last error", letter.last_error or "-"),
            ("first attempt", time_text(letter.first_attempt_at)),
            ("dead at", time_text(letter.dead_at)),
            ("replays", str(letter.replays)),
        )
    )


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
    """List dead letters, newest first, as a table or JSON lines.

    The table keeps ids whole and adds columns as the terminal widens (when, attempts, tenant, last outcome).
    """
    filters = {"reason": reason, "tenant": tenant, "task_id": task_id, "since": since, "until": until}
    with open_relay(url, token) as relay:
        print_list(
            iter_dead_letters(relay, filters, limit),
            as_json=as_json,
            table=lambda found: dead_letter_table(found, stdout().width),
            empty="No dead letters.",
        )


@dlq.command()
@click.argument("dead_letter_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the dead letter's JSON as the API sends it.")
@_operator
def show(dead_letter_id: str, as_json: bool, url: str, token: str) -> None:
    """Show one dead letter: its fields, its event and every delivery attempt at that event."""
    with open_relay(url, token) as relay:
        letter = relay.dead_letters.get(dead_letter_id)
        if as_json:
            # Encoded again from what the client read: the same JSON, but for a field newer than this client.
            click.echo(ENCODER.encode(letter).decode())
            return
        deliveries = _deliveries_of(relay, letter)
    console = stdout()
    console.print(_dead_letter_fields(letter))
    console.print(Text("\nevent", style="bold"))
    console.print(JSON.from_data(msgspec.to_builtins(letter.event)))
    if deliveries is None:
        console.print(Text("\nThe task's attempt log has expired; see attempts and last status above.", style="dim"))
    else:
        console.print(Text("\nattempts", style="bold"))
        console.print(attempts_table(deliveries.attempts, steps=deliveries.steps))


def _deliveries_of(relay: Relay, letter: DeadLetter) -> AttemptList | None:
    """The attempts at the dead letter's event with its dead-lettered and replayed steps, or None when the task
    (and its log) is gone."""
    try:
        found = relay.tasks.deliveries(letter.task_id)
    except NotFound:
        return None
    return AttemptList(
        attempts=[attempt for attempt in found.attempts if attempt.event_id == letter.event.id],
        steps=[step for step in found.steps if step.event_id == letter.event.id],
    )


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
    """Queue dead letters for delivery again: the given IDs, or --all that match the filters.

    A replay queues the same event (same webhook-id) on a fresh retry schedule; whether it then arrives shows
    in the task's deliveries (and a new dead letter if it fails again). --all lists the matching dead letters,
    then queues them one by one with a progress bar on stderr; --all --dry-run only counts.
    """
    _check_selection(
        ids, all_, {"reason": reason, "tenant": tenant, "since": since, "until": until, "dry_run": dry_run}
    )
    with open_relay(url, token) as relay:
        if all_ and dry_run:
            result = relay.dead_letters.replay_bulk(
                dry_run=True, reason=reason, tenant=tenant, since=since, until=until
            )
            click.echo(f"dry run: {result.matched} would be queued for delivery again")
            return
        if all_:
            # One by one rather than the bulk endpoint, so that a long replay shows its progress.
            filters = {"reason": reason, "tenant": tenant, "since": since, "until": until}
            ids = tuple(letter.id for letter in iter_dead_letters(relay, filters, None))
        done = for_each(ids, relay.dead_letters.replay, "Queueing")
    click.echo(f"queued {done} of {len(ids)} for delivery again (their outcome shows in each task's deliveries)")
    exit_if_short(done, len(ids))


@dlq.command()
@_ids_argument
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter that matches the filters.")
@_reason_option
@_tenant_option
@_since_option
@_until_option
@click.option("--dry-run", is_flag=True, help="With --all: count what would be deleted, delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="With --all: do not ask before deleting.")
@_operator
def purge(
    ids: tuple[str, ...],
    all_: bool,
    reason: str | None,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    dry_run: bool,
    yes: bool,
    url: str,
    token: str,
) -> None:
    """Delete dead letters for good: the given IDs, or --all that match the filters.

    With --all the matching dead letters are listed (the first 20, newest first) and counted, then purge asks
    before deleting them (--yes does not ask, but still lists; --dry-run only counts).
    """
    filters = {"reason": reason, "tenant": tenant, "since": since, "until": until}
    _check_selection(ids, all_, {**filters, "dry_run": dry_run})  # --yes is harmless with ids: nothing to ask
    with open_relay(url, token) as relay:
        if all_:
            letters = list(iter_dead_letters(relay, filters, None))
            ids = tuple(letter.id for letter in letters)
            if dry_run:
                click.echo(f"dry run: {len(ids)} would be deleted")
                return
            if not ids:
                click.echo("No dead letters match; nothing deleted.")
                return
            console = stdout()
            console.print(dead_letter_table(letters[:PURGE_LISTED], console.width))
            if len(letters) > PURGE_LISTED:
                click.echo(f"… and {len(letters) - PURGE_LISTED} more ({len(letters)} in all)")
            noun = "dead letter" if len(ids) == 1 else "dead letters"
            if not yes and not click.confirm(f"Delete {len(ids)} {noun} for good?", err=True):
                click.echo("Nothing deleted.")
                return
        done = for_each(ids, relay.dead_letters.delete, "Deleting")
    click.echo(f"deleted {done} of {len(ids)}")
    exit_if_short(done, len(ids))
