"""The cluster half's report (``--cluster``): the standalone Redis beside the cluster, the spread over the masters,
and the projection of tasks per second to more or fewer masters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scripts.benchmark.webhooks.report import count, ms, ratio
from scripts.benchmark.webhooks.scaling import CORE_US

if TYPE_CHECKING:
    from rich.console import Console

# The spread's figures: the key in ``spread``, the node's field, the column's title.
FIGURES = (
    ("keys", "keys", "keys held"),
    ("commands", "commands_per_task", "commands"),
    ("cpu", "cpu_us_per_task", "Redis CPU"),
)


def print_cluster(console: Console, result: dict[str, Any]) -> None:
    """The cluster half (``result["cluster"]``) beside the standalone run's throughput phase."""
    cluster = result["cluster"]
    if "throughput" not in cluster:
        console.print(f"[red]The cluster half did not run[/]: {cluster.get('error')}", highlight=False)
        return
    print_beside(console, result, cluster)
    print_spread(console, cluster)
    print_projection(console, cluster)
    notes = [
        f"{name} log {found['counts']}: " + " | ".join(found["samples"][:3])
        for name, found in cluster.get("logs", {}).items()
        if found["counts"]
    ]
    if notes:
        console.print("[yellow]On the cluster[/]: " + "; ".join(notes), highlight=False, soft_wrap=True)


def print_beside(console: Console, result: dict[str, Any], cluster: dict[str, Any]) -> None:
    from rich.table import Table

    standalone, thr, masters = result["throughput"], cluster["throughput"], cluster["masters"]
    table = Table(
        title=f"A standalone Redis beside a Redis Cluster of {masters} masters ({cluster['partitions']} partitions)",
        title_justify="left",
        caption=f"The throughput phase on each: same driver, receiver, -n and concurrency, {cluster['tenants']} "
        "tenants in turn, the broker a Redis of its own (flushed between them). Redis: the storage, every node "
        "added up; ÷: cluster over standalone.",
        caption_justify="left",
    )
    table.add_column("figure")
    table.add_column("standalone", justify="right")
    table.add_column(f"{masters} masters", justify="right")
    table.add_column("÷", justify="right")

    def add(figure: str, key: Callable[[dict[str, Any]], float | None], shown: Callable[[float | None], str]) -> None:
        theirs, ours = key(standalone), key(thr)
        table.add_row(figure, shown(theirs), shown(ours), ratio(ours, theirs))

    def cpu(group: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda f: f["cpu_us_per_task"].get(group)

    add("end to end, tasks/s", lambda f: f["end_to_end_per_s"], lambda v: f"[bold]{count(v)}[/]")
    add("submit, tasks/s", lambda f: f["submit_per_s"], count)
    add("latency p50", lambda f: f["p50_ms"], ms)
    add("latency p99", lambda f: f["p99_ms"], ms)
    table.add_row("missing / duplicates", *(f"{f['missing']} / {f['duplicates']}" for f in (standalone, thr)), "")
    add("Redis commands / task", lambda f: round(sum(f["redis_calls_per_task"].values()), 1), count)
    add("  of which EVALSHA", lambda f: f["redis_calls_per_task"].get("evalsha", 0), count)
    add("broker's commands / task", lambda f: round(sum(f.get("broker_calls_per_task", {}).values()), 1), count)
    for group in ("api", "worker", "redis"):
        add(f"CPU µs / task: {group}", cpu(group), count)
    add("  service (the three)", cpu("service"), lambda v: f"[bold]{count(v)}[/]")
    add("  broker", cpu("broker"), count)
    # What one core of Redis carries: the standalone one's, and the busiest master's (the projection's own row).
    redis_us = standalone["cpu_us_per_task"]["redis"]
    one = round(CORE_US / redis_us) if redis_us else None
    row: dict[str, Any] = next((r for r in cluster["projection"]["rows"] if r["masters"] == masters), {})
    table.add_row(
        "tasks/s at a core on the busiest Redis",
        count(one),
        count(row.get("masters_per_s")),
        ratio(row.get("masters_per_s"), one),
    )
    speeds = (result.get("box_speed", [])[:2], cluster.get("box_speed", []))
    table.add_row("box speed, before / after", *(" / ".join(f"{s:g}" for s in speed) for speed in speeds), "")
    console.print(table)
    top_calls = ", ".join(f"{k} {v:g}" for k, v in list(thr["redis_calls_per_task"].items())[:10])
    console.print(f"The cluster's Redis commands per task, every node: {top_calls}", highlight=False)


def print_spread(console: Console, cluster: dict[str, Any]) -> None:
    from rich.table import Table

    spread, nodes = cluster["spread"], cluster["nodes"]
    tolerance = spread["tolerance"]
    table = Table(
        title="Over the masters: each one's share of the cluster's, and how far from the mean",
        title_justify="left",
        caption=f"Even: every master within ±{tolerance:.0%} of the mean. Keys: held at the end; commands and "
        "CPU: in the throughput phase.",
        caption_justify="left",
    )
    table.add_column("master", no_wrap=True)
    table.add_column("parts", justify="right")
    for _, _, title in FIGURES:
        table.add_column(title, justify="right")
    for node in nodes:
        address = node["address"]
        cells = [
            f"{spread[figure][address]['share']:5.1%} ({spread[figure][address]['deviation']:+.1%})"
            for figure, _, _ in FIGURES
        ]
        table.add_row(address, str(node["partitions"]), *cells)
    table.add_row(
        "all",
        str(sum(n["partitions"] for n in nodes)),
        f"{sum(n['keys'] for n in nodes):,}",
        f"{count(round(sum(n['commands_per_task'] for n in nodes), 1))} / task",
        f"{count(sum(n['cpu_us_per_task'] for n in nodes))} µs / task",
        style="dim",
    )
    console.print(table)
    verdicts = []
    for figure, _, title in FIGURES:
        worst = max((abs(s["deviation"]) for s in spread[figure].values()), default=0.0)
        verdict = "[green]even[/]" if worst <= tolerance else "[red]uneven[/]"
        verdicts.append(f"{title} {verdict} (worst {worst:.1%})")
    console.print("Spread: " + ", ".join(verdicts), highlight=False)


def print_projection(console: Console, cluster: dict[str, Any]) -> None:
    from rich.table import Table

    p = cluster["projection"]
    cpu = cluster["throughput"]["cpu_us_per_task"]
    console.print(
        f"CPU per task on the cluster: Redis {count(p['redis_us_per_task'])} µs over every master (the busiest "
        f"{p['skew']:.2f}x its partitions' share), the broker {count(cpu.get('broker'))} µs, API "
        f"{count(cpu['api'])} µs, worker {count(cpu['worker'])} µs. At a core each, tasks/s bound by the broker: "
        f"{count(p['broker_per_s'])}; by this run's API processes: {count(p['api_per_s'])}; by its worker "
        f"processes: {count(p['worker_per_s'])}.",
        highlight=False,
    )
    table = Table(
        title="Tasks/s against masters, projected from this run's CPU per task",
        title_justify="left",
        caption="busiest: the busiest master's share of the cluster's Redis CPU (its partitions, times the skew "
        "measured); at a core: tasks/s when it spends one core; processes: API + worker processes, a core each, "
        "that keep up with the lower of that and the broker's bound.",
        caption_justify="left",
    )
    for column in ("masters", "busiest", "at a core", "projected", "limited by", "processes"):
        table.add_column(column, justify="right")
    for row in p["rows"]:
        processes = "-"
        if row["api_processes"] is not None and row["worker_processes"] is not None:
            processes = f"{row['api_processes']} + {row['worker_processes']}"
        table.add_row(
            str(row["masters"]),
            f"{row['busiest_share']:.1%}",
            count(row["masters_per_s"]),
            f"[bold]{count(row['per_s'])}[/]",
            row["limit"] or "-",
            processes,
        )
    console.print(table)
    if p["broker_per_s"] is not None:
        needed = p["masters_for_broker"]
        shown = str(needed) if needed is not None else f"more than {cluster['partitions']} (the partitions)"
        console.print(
            f"Masters it takes so that none spends more than a core at the broker's bound ({count(p['broker_per_s'])} "
            f"tasks/s): {shown}; with more, the broker limits first.",
            highlight=False,
        )
