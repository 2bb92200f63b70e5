"""The webhook bench's report: the figures of each phase, the quiet day beside the bad day, Relay beside the naive
peer, CPU per group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scripts.benchmark.meter import BROKER_GROUPS, GROUPS, SERVICE_GROUPS
from scripts.benchmark.webhooks.phases import CEILING_IN_FLIGHT

if TYPE_CHECKING:
    from rich.console import Console


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = result["config"]
    spread = f", {cfg['tenants']} tenants in turn" if cfg.get("tenants", 1) > 1 else ""
    broker = ", the broker on a Redis of its own" if cfg.get("broker") == "own redis" else ""
    console.print(
        f"\n[bold]Relay bench[/]  {cfg['tasks']} tasks{spread}, {cfg['concurrency']} in flight, "
        f"api x{cfg['api_workers']}, worker x{cfg['worker_processes']} ({cfg['threads']} threads), "
        f"{cfg['cpus']} cpus{broker}"
    )
    speed = result.get("box_speed")
    if speed:
        console.print(
            "Box speed, a pure-Python loop (M steps per CPU second) at the start, after the throughput phase and at "
            f"the end: {' / '.join(f'{s:g}' for s in speed)} (a slower box makes every figure below slower)",
            highlight=False,
        )
    ceiling, thr, paced = result["ceiling"], result["throughput"], result["paced"]

    table = Table(title="Results", title_justify="left")
    table.add_column("phase")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(
        "ceiling", f"sign + POST to receiver, {CEILING_IN_FLIGHT} in flight", f"{ceiling['req_per_s']:,} req/s"
    )
    table.add_row("throughput", f"submit ({cfg['concurrency']} in flight)", f"{thr['submit_per_s']:,} tasks/s")
    table.add_row("", "end to end (first submit, last webhook)", f"[bold]{thr['end_to_end_per_s']:,} tasks/s[/]")
    table.add_row("", "latency p50 / p99", f"{ms(thr['p50_ms'])} / {ms(thr['p99_ms'])}")
    table.add_row(
        "", "delivered / missing / duplicates", f"{thr['delivered']} / {thr['missing']} / {thr['duplicates']}"
    )
    table.add_row("", "signature check", thr["signature"])
    per_task = thr["redis_calls_per_task"]
    table.add_row("", "Redis commands per task", f"{sum(per_task.values()):.1f}")
    if thr["submit_errors"]:
        table.add_row("", "submit errors", str(thr["submit_errors"]))
    for missing in thr["missing_sample"]:
        tried = len(missing["attempts"])
        table.add_row("", f"missing {missing['task_id']}", f"{missing['status']}, {tried} attempt{'s' * (tried != 1)}")
    table.add_row(
        "half rate",
        f"paced open loop at {paced['rate_per_s']:,}/s for {cfg['paced_s']:g} s",
        f"{paced['accepted']:,} tasks",
    )
    table.add_row("", "latency p50 / p99", f"{ms(paced['p50_ms'])} / {ms(paced['p99_ms'])}")
    table.add_row("", "missing / client lag p99", f"{paced['missing']} / {ms(paced['submit_lag_p99_ms'])}")
    if paced["submit_errors"]:
        table.add_row("", "submit errors", str(paced["submit_errors"]))
    console.print(table)
    bad = result.get("bad_day")
    if bad is not None:
        day = Table(title="Quiet day and bad day: the healthy destination", title_justify="left")
        day.add_column("figure")
        day.add_column("quiet day", justify="right")
        day.add_column("bad day", justify="right")
        bt, bp = bad["throughput"], bad["paced"]
        day.add_row("end to end", f"{thr['end_to_end_per_s']:,} tasks/s", f"{bt['end_to_end_per_s']:,} tasks/s")
        day.add_row(
            "latency p50 / p99",
            f"{ms(thr['p50_ms'])} / {ms(thr['p99_ms'])}",
            f"{ms(bt['p50_ms'])} / {ms(bt['p99_ms'])}",
        )
        day.add_row(
            f"half rate ({paced['rate_per_s']:,}/s) p50 / p99",
            f"{ms(paced['p50_ms'])} / {ms(paced['p99_ms'])}",
            f"{ms(bp['p50_ms'])} / {ms(bp['p99_ms'])}",
        )
        day.add_row("missing", f"{thr['missing'] + paced['missing']}", f"{bt['missing'] + bp['missing']}")
        console.print(day)
        console.print(
            f"Bad day: {bad['bad_owed']:,} webhooks owed to the two bad receivers; over {bad['seconds']:g} s the one "
            f"that drops connections got {bad['dead_connections']} and the one that hangs {bad['hang_requests']} "
            f"requests; at the end: hang {bad['states']['hang']}, dead {bad['states']['dead']}",
            highlight=False,
        )

    if "peer" in result:
        print_peer(console, thr, result["peer"])

    cpu = Table(title="CPU seconds per process group (% of one core over the phase)", title_justify="left")
    cpu.add_column("group")
    for phase in ("ceiling", "throughput", "half rate"):
        cpu.add_column(phase, justify="right")
    cpu.add_column("µs / task (throughput)", justify="right")
    walls = (ceiling["seconds"], thr["seconds"], paced["seconds"])
    for group in BROKER_GROUPS if "broker" in thr["cpu_s"] else GROUPS:
        cells = [
            f"{p['cpu_s'][group]:.2f} ({100 * p['cpu_s'][group] / max(w, 1e-9):.0f}%)"
            for p, w in zip((ceiling, thr, paced), walls, strict=True)
        ]
        label = "rest of box" if group == "other" else group
        cpu.add_row(label, *cells, f"{thr['cpu_us_per_task'][group]:,}")
    console.print(cpu)
    top_calls = ", ".join(f"{k} {v:g}" for k, v in list(per_task.items())[:10])
    console.print(f"Redis commands per task (throughput, incl. inside Lua): {top_calls}", highlight=False)
    if "broker_calls_per_task" in thr:
        top_calls = ", ".join(f"{k} {v:g}" for k, v in list(thr["broker_calls_per_task"].items())[:10])
        console.print(f"The broker's Redis commands per task (throughput): {top_calls}", highlight=False)

    if "cluster" in result:
        from scripts.benchmark.webhooks.cluster_report import print_cluster  # it draws on this module's helpers

        print_cluster(console, result)

    for name, spots in result.get("profile", {}).items():
        console.print(f"\n[bold]py-spy --gil: {name}[/] ({spots['samples']} samples holding the GIL, throughput phase)")
        for title, key in (
            ("own time by package", "packages"),
            ("own time by function", "own"),
            ("Relay's functions, including callees", "ours"),
        ):
            console.print(f"  {title}:", highlight=False)
            for func, share in spots[key]:
                console.print(f"    {share:5.1f}%  {func}", highlight=False, soft_wrap=True)
        console.print(f"  raw: {spots['file']}", highlight=False, soft_wrap=True)


def print_peer(console: Console, relay: dict[str, Any], peer: dict[str, Any]) -> None:
    """Relay's throughput phase beside the same phase against the naive peer, and their ratio."""
    from rich.table import Table

    if "throughput" not in peer:
        console.print(f"[red]The naive peer did not run[/]: {peer.get('error')}", highlight=False)
        return
    other = peer["throughput"]
    table = Table(
        title="Relay beside the naive peer (the throughput phase: same driver, receiver, -n and concurrency)",
        title_justify="left",
        caption="Relay ÷ peer: above 1, Relay's figure is the larger (more per second, more ms or more CPU). The "
        "peer ran after Relay's phases, with Relay's processes stopped.",
        caption_justify="left",
    )
    table.add_column("figure")
    table.add_column("Relay", justify="right")
    table.add_column("naive peer", justify="right")
    table.add_column("Relay ÷ peer", justify="right")

    def add(figure: str, key: Callable[[dict[str, Any]], float | None], shown: Callable[[float | None], str]) -> None:
        ours, theirs = key(relay), key(other)
        table.add_row(figure, shown(ours), shown(theirs), ratio(ours, theirs))

    def cpu(group: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda f: f["cpu_us_per_task"][group]

    add("submit, tasks/s", lambda f: f["submit_per_s"], count)
    add("end to end, tasks/s", lambda f: f["end_to_end_per_s"], lambda v: f"[bold]{count(v)}[/]")
    add("latency p50", lambda f: f["p50_ms"], ms)
    add("latency p99", lambda f: f["p99_ms"], ms)
    table.add_row(
        "delivered / missing / duplicates",
        *(f"{f['delivered']:,} / {f['missing']} / {f['duplicates']}" for f in (relay, other)),
        "",
    )
    add("Redis commands per task", lambda f: round(sum(f["redis_calls_per_task"].values()), 1), count)
    for group in SERVICE_GROUPS:
        add(f"CPU µs per task: {group}", cpu(group), count)
    add("CPU µs per task: service (api + worker + redis)", cpu("service"), lambda v: f"[bold]{count(v)}[/]")
    console.print(table)
    notes = []
    if other["signature"] != "ok":
        notes.append(f"signature check {other['signature']}")
    if other["submit_errors"]:
        notes.append(f"submit errors {other['submit_errors']}")
    if other["not_succeeded"]:
        notes.append(f"{other['not_succeeded']} webhooks not 'succeeded'")
    for name, found in peer.get("logs", {}).items():
        if found["counts"]:
            notes.append(f"{name} log {found['counts']}: " + " | ".join(found["samples"][:3]))
    if notes:
        console.print("[yellow]Naive peer[/]: " + "; ".join(notes), highlight=False, soft_wrap=True)


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if ours is None or not theirs else f"{ours / theirs:.2f}"


def count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"
