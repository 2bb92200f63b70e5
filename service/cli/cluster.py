"""``relay cluster``: the storage's nodes, how Relay's partitions sit on them, and the processes alive."""

from __future__ import annotations

import click
from relay_client.types import ClusterView, StorageNode
from rich.table import Column, Table

from service.cli.client import ADMIN_TOKEN_ENV, ENCODER, api_options, open_relay
from service.cli.render import stdout


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 10_000_000 else f"{n / 1e3:.0f}k" if n >= 100_000 else str(n)


def _role(node: StorageNode) -> str:
    role = "master" if node.role == "master" else "replica"
    return role if node.up else f"{role} DOWN"


def table(view: ClusterView) -> Table:
    """One row per node, masters each followed by their replicas; fits 80 columns."""
    grid = Table(
        Column("node"),
        Column("role"),
        Column("slots", justify="right"),
        Column("parts", justify="right"),
        Column("keys", justify="right"),
        Column("mem", justify="right"),
        Column("cmd/s", justify="right"),
        Column("tasks", justify="right"),
        Column("hooks", justify="right"),
        box=None,
        pad_edge=False,
    )
    for node in view.nodes:
        master = node.role == "master"
        grid.add_row(
            node.address if master else f" └ {node.address}",
            _role(node),
            str(node.slots) if master else "",
            str(node.partitions) if master else "",
            _count(node.keys),
            _size(node.memory_bytes),
            _count(node.commands_per_s),
            _count(node.owed_tasks) if master else "",
            _count(node.owed_webhooks) if master else "",
        )
    return grid


@click.command("cluster")
@api_options(ADMIN_TOKEN_ENV, "The admin token.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def cluster(url: str, token: str, as_json: bool) -> None:
    """Show the storage's nodes and the Relay processes alive.

    Per node: its role, the slots it holds, how many of Relay's partitions live there (each is one slot), its
    keys, memory and commands per second, and the tasks and webhooks owed in its partitions. Then the workers and
    API processes whose heartbeat is fresh. A standalone Redis is one node holding everything.
    """
    with open_relay(url, token) as relay:
        view = relay.ops.cluster()
    if as_json:
        click.echo(ENCODER.encode(view).decode())
        return
    masters = [n for n in view.nodes if n.role == "master"]
    down = [n for n in view.nodes if not n.up]
    click.echo(
        f"{view.mode}: {len(masters)} master{'s' if len(masters) != 1 else ''}, "
        f"{len(view.nodes) - len(masters)} replicas, {view.partitions} partitions"
        + (f", {len(down)} DOWN" if down else "")
    )
    stdout().print(table(view))
    click.echo(_members("workers alive", view.workers))
    click.echo(_members("API nodes alive", view.api_nodes))


def _members(label: str, ids: list[str] | None) -> str:
    if ids is None:
        return f"{label}: unknown (the master holding the heartbeats does not answer)"
    if not ids:
        return f"{label}: 0"
    shown = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
    return f"{label}: {len(ids)} ({shown})"
