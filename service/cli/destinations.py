"""``relay destinations ...``: see and steer the flow control of each receiver, over the HTTP API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import click
import msgspec
from relay_client import Relay
from relay_client.types import Destination, DestinationState
from rich.table import Column, Table
from rich.text import Text

from schemas.destinations import MAX_IN_FLIGHT, MAX_RATE_PER_S, MIN_RATE_PER_S
from service.cli.client import ADMIN_TOKEN_ENV, ENCODER, CommandFailed, F, api_options, open_relay, page_size
from service.cli.render import fields_grid, print_list, stdout, time_text

# Terminal widths from which the list shows the last error, and the last success too.
MEDIUM = 110
WIDE = 140
_STYLE = {
    DestinationState.OPEN: "bold red",
    DestinationState.PAUSED: "yellow",
    DestinationState.DEGRADED: "magenta",
    DestinationState.HEALTHY: "green",
}

_token = api_options(ADMIN_TOKEN_ENV, "Operator (admin) token, or a tenant's API key for its own destinations.")


def _rate(d: Destination) -> str:
    return "-" if d.rate_per_s is None else f"{d.rate_per_s:g}/s"


def error_is_current(d: Destination) -> bool:
    """Whether the destination's last error came after its last success (an older one is history, not its state)."""
    if d.last_error is None:
        return False
    if d.last_success_at is None or d.last_failure_at is None:
        return True
    return d.last_failure_at >= d.last_success_at


def _error_cell(d: Destination) -> Text:
    """The last error with its time, whole (the column folds it); nothing for one a success has followed."""
    if not error_is_current(d):
        return Text("-")
    return Text(f"{time_text(d.last_failure_at)}  {d.last_error}")


def _last_error(d: Destination) -> str:
    if d.last_error is None:
        return "-"
    when = f"{d.last_error} (at {time_text(d.last_failure_at)}"
    return f"{when})" if error_is_current(d) else f"{when}, before the last success)"


def next_probe(d: Destination, now: datetime | None = None) -> str:
    """When an open destination probes: with nothing owed there is nothing to probe with, so say so."""
    if d.state is not DestinationState.OPEN or d.next_probe_at is None:
        return "-"
    at = time_text(d.next_probe_at)
    if d.owed == 0:
        if d.next_probe_at <= (now or datetime.now(UTC)):
            return f"waiting for a webhook to probe with (its wait ended at {at}; the next one owed probes at once)"
        return f"{at}, with the next webhook owed (none is owed now)"
    if d.in_flight > 0:
        return "a probe is in flight"
    return at


def _table(destinations: Sequence[Destination], width: int) -> Table:
    """Ids whole on one line (they are what you copy); the last columns only where they fit."""
    wide, medium = width >= WIDE, width >= MEDIUM
    columns = [
        Column("id", no_wrap=True, min_width=max(len(d.id) for d in destinations)),
        Column("state", no_wrap=True),
        Column("flight", justify="right", no_wrap=True),
        Column("owed", justify="right", no_wrap=True),
        Column("tenant", overflow="fold", min_width=6),
        Column("origin", overflow="fold", min_width=12),
    ]
    if wide:
        columns.append(Column("last success", no_wrap=True))
    if medium:
        columns.append(Column("last error", overflow="fold", min_width=10))
    table = Table(*columns, box=None, padding=(0, 2, 0, 0), header_style="bold")
    for d in destinations:
        row: list[str | Text] = [
            Text(d.id),
            Text(d.state.value, style=_STYLE.get(d.state, "")),
            f"{d.in_flight}/{d.max_in_flight}",
            str(d.owed),
            Text(d.tenant),
            Text(d.origin),
        ]
        if wide:
            row.append(time_text(d.last_success_at))
        if medium:
            row.append(_error_cell(d))
        table.add_row(*row)
    return table


def _fields(d: Destination) -> Table:
    rows: list[tuple[str, str | Text]] = [
        ("id", d.id),
        ("tenant", d.tenant),
        ("origin", d.origin),
        ("state", Text(d.state.value, style=_STYLE.get(d.state, ""))),
        ("in flight", f"{d.in_flight} of at most {d.max_in_flight}"),
        ("rate", _rate(d)),
        ("owed", str(d.owed)),
        ("failures in a row", str(d.consecutive_failures)),
        ("last success", time_text(d.last_success_at)),
        ("last failure", time_text(d.last_failure_at)),
        ("last error", _last_error(d)),
        ("opened at", time_text(d.opened_at)),
        ("next probe", next_probe(d)),
    ]
    return fields_grid(rows)


def _show(d: Destination, as_json: bool) -> None:
    if as_json:
        click.echo(ENCODER.encode(d).decode())
    else:
        stdout().print(_fields(d))


@click.group()
def destinations() -> None:
    """See and steer destinations: where each tenant's webhooks go, with their breaker and caps."""


@destinations.command("list")
@click.option(
    "--state", type=click.Choice([s.value for s in DestinationState]), help="Only destinations in this state."
)
@click.option("--tenant", metavar="T", help="Only this tenant's destinations.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@_token
def list_destinations(state: str | None, tenant: str | None, as_json: bool, url: str, token: str) -> None:
    """List destinations, worst first (open, paused, degraded, healthy; then the most owed)."""
    with open_relay(url, token) as relay:
        print_list(
            relay.destinations.list(state=state, tenant=tenant, page_size=page_size(None)),
            as_json=as_json,
            table=lambda found: _table(found, stdout().width),
            empty="No destinations.",
        )


def _one_destination(command: F) -> F:
    """The ID argument and the options every command on one destination takes."""
    command = _token(command)
    command = click.option("--json", "as_json", is_flag=True, help="Print the destination's JSON.")(command)
    return click.argument("destination_id", metavar="ID")(command)


def _on(url: str, token: str, as_json: bool, action: Callable[[Relay], Destination]) -> None:
    """Call the API on one destination and show what it answers."""
    with open_relay(url, token) as relay:
        _show(action(relay), as_json)


@destinations.command()
@_one_destination
def show(destination_id: str, as_json: bool, url: str, token: str) -> None:
    """Show one destination."""
    _on(url, token, as_json, lambda relay: relay.destinations.get(destination_id))


@destinations.command()
@_one_destination
def pause(destination_id: str, as_json: bool, url: str, token: str) -> None:
    """Hold every webhook of a destination (none sent, none dead-lettered) until it is resumed."""
    _on(url, token, as_json, lambda relay: relay.destinations.pause(destination_id))


@destinations.command()
@_one_destination
def resume(destination_id: str, as_json: bool, url: str, token: str) -> None:
    """Release a paused destination: its backlog drains within its caps, oldest first."""
    _on(url, token, as_json, lambda relay: relay.destinations.resume(destination_id))


@destinations.command("set")
@_one_destination
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, MAX_IN_FLIGHT),
    help="Attempts in flight at once to this destination, across the cluster.",
)
@click.option(
    "--rate",
    type=click.FloatRange(MIN_RATE_PER_S, MAX_RATE_PER_S),  # NaN is outside every range; so is infinity here
    help="Most attempts started per second.",
)
@click.option("--no-rate", is_flag=True, help="Remove the rate limit.")
def set_caps(
    destination_id: str,
    max_in_flight: int | None,
    rate: float | None,
    no_rate: bool,
    as_json: bool,
    url: str,
    token: str,
) -> None:
    """Change a destination's caps."""
    if rate is not None and no_rate:
        raise click.UsageError("give --rate or --no-rate, not both")
    if max_in_flight is None and rate is None and not no_rate:
        raise click.UsageError("nothing to set: give --max-in-flight, --rate or --no-rate")
    # What is not given stays as it is: UNSET leaves the rate out of the request, None removes it.
    rate_per_s: float | msgspec.UnsetType | None = None if no_rate else msgspec.UNSET if rate is None else rate
    _on(
        url,
        token,
        as_json,
        lambda relay: relay.destinations.update(destination_id, max_in_flight=max_in_flight, rate_per_s=rate_per_s),
    )


__all__ = ["CommandFailed", "destinations"]
