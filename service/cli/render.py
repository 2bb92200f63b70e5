"""What the ``relay`` client commands print: tables on a terminal, JSON lines for scripts, progress on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

import click
import msgspec
from relay_client import ApiError
from relay_client.types import Attempt, DeliveryStep, StepKind
from rich.console import Console
from rich.progress import Progress
from rich.table import Column, Table
from rich.text import Text

from service.cli.client import ENCODER, answered

# Columns rich may use when stdout is not a terminal, so piped rows keep to one line each.
PIPE_WIDTH = 1000
T = TypeVar("T")


def time_text(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def stdout() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def print_list(items: Iterable[T], *, as_json: bool, table: Callable[[list[T]], Table], empty: str) -> None:
    """Every item as a JSON line (as it comes, page by page), or all of them as one table; ``empty`` when none."""
    if as_json:
        for item in items:
            click.echo(ENCODER.encode(item).decode())
        return
    found = list(items)
    if found:
        stdout().print(table(found))
    else:
        click.echo(empty)


def pretty(value: object) -> str:
    return msgspec.json.format(ENCODER.encode(value), indent=2).decode()


@contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A transient progress bar on a terminal's stderr for more than one item; yields ``advance``."""
    console = Console(stderr=True)
    if total <= 1 or not console.is_terminal:
        yield lambda: None
        return
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as bars:
        bar = bars.add_task(description, total=total)
        yield lambda: bars.advance(bar)


def for_each(ids: Sequence[str], action: Callable[[str], object], description: str) -> int:
    """Run ``action`` on every id and return how many succeeded.

    An error answer for one id is reported and the others go on; an unreachable API stops them all.
    """
    done = 0
    with progress(len(ids), description) as advance:
        for item in ids:
            try:
                action(item)
            except ApiError as exc:
                click.echo(f"relay: {item}: {answered(exc)}", err=True)
            else:
                done += 1
            advance()
    return done


def exit_if_short(done: int, total: int) -> None:
    if done < total:
        click.get_current_context().exit(1)


def attempts_table(
    attempts: Sequence[Attempt],
    *,
    events: Mapping[str, str] | None = None,
    steps: Sequence[DeliveryStep] = (),
) -> Table:
    """Delivery attempts, one row each, in the order given, with ``steps`` (dead-lettered, replayed) between them
    where their time puts them; with ``events`` (event id -> how to name it), a first column says which event each
    row is about."""
    table = Table(
        *([Column("event", no_wrap=True)] if events is not None else []),
        Column("#", justify="right"),
        "channel",
        "at",
        "outcome",
        Column("status", justify="right"),
        "error",
        Column("ms", justify="right"),
    )

    def event(event_id: str) -> list[str]:
        return [events.get(event_id, event_id)] if events is not None else []

    waiting = sorted(steps, key=lambda step: step.at)
    for attempt in attempts:
        while waiting and waiting[0].at < attempt.at:
            step = waiting.pop(0)
            table.add_row(*event(step.event_id), *_step_cells(step))
        table.add_row(
            *event(attempt.event_id),
            str(attempt.attempt),
            attempt.channel.value,
            time_text(attempt.at),
            attempt.outcome.value,
            "-" if attempt.status_code is None else str(attempt.status_code),
            Text(attempt.error or "-"),
            f"{attempt.duration_ms:.0f}",
        )
    for step in waiting:
        table.add_row(*event(step.event_id), *_step_cells(step))
    return table


def _step_cells(step: DeliveryStep) -> list[str | Text]:
    """A dead-lettered or replayed step, in the columns of an attempt: what happened, to which dead letter."""
    if step.step is StepKind.DEAD_LETTERED:
        outcome, note = "dead-lettered", f"{step.reason.value if step.reason else 'dead'}: {step.dead_letter_id}"
    elif step.step is StepKind.REPLAYED:
        outcome, note = "replayed", f"sent again from {step.dead_letter_id}"
    else:  # a step a newer Relay records
        outcome, note = step.step.value, step.dead_letter_id
    return ["", "webhook", time_text(step.at), Text(outcome, style="bold"), "-", Text(note), ""]


def fields_grid(rows: Iterable[tuple[str, str | Text]]) -> Table:
    """One object's fields, a bold name and its value per line (values are never read as markup)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value if isinstance(value, Text) else Text(value))
    return grid
