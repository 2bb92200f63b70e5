"""The WebSocket bench's report: Relay beside the raw floor, CPU per group, and anything amiss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scripts.benchmark.meter import SERVICE_GROUPS
from scripts.benchmark.ws.control import GROUPS

if TYPE_CHECKING:
    from rich.console import Console

# Targets printed beside the figures.
TARGET_P99_MS = 20.0
TARGET_FANOUT_SHARE = 0.5
TARGET_KB_PER_SOCKET = 30.0
# Other processes' CPU (share of one core) above which a phase's figures are flagged as disturbed.
OTHER_LOAD_WARN = 0.25


def print_report(result: dict[str, Any], webhooks: dict[str, Any] | None = None) -> None:
    """The WebSocket figures; with the same run's webhook figures, a webhook task's CPU beside a WebSocket-only one."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    cfg = result["config"]
    console.print(
        f"\n[bold]Relay WebSocket bench[/]  {cfg['sockets']:,} sockets, {cfg['clients']} client processes, "
        f"1 API process, {cfg['cpus']} cpus (server, Redis and clients share them)"
    )
    lat, fan, mem, e2e = result["latency"], result["fanout"], result["memory"], result["e2e"]
    r_lat, f_lat = lat["Relay"], lat["floor"]
    r_fan, f_fan = fan["Relay"], fan["floor"]

    def ok(flag: bool) -> str:
        return "[green]met[/]" if flag else "[red]MISSED[/]"

    table = Table(title="Relay beside the raw floor (same run)", title_justify="left")
    for col, justify in (("figure", "left"), ("Relay", "right"), ("floor", "right"), ("target", "left"), ("", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_row(
        f"push latency p50 / p99, {cfg['sockets']:,} sockets, {r_lat['rate_per_s']:,} events/s",
        f"{r_lat['p50_ms']} / {r_lat['p99_ms']} ms",
        f"{f_lat['p50_ms']} / {f_lat['p99_ms']} ms",
        f"p99 < {TARGET_P99_MS:g} ms",
        ok(r_lat["p99_ms"] is not None and r_lat["p99_ms"] < TARGET_P99_MS),
    )
    table.add_row(
        "  server CPU per event at that rate",
        f"{r_lat['server_cpu_us_per_event']} µs",
        f"{f_lat['server_cpu_us_per_event']} µs",
        "",
        "",
    )
    table.add_row(
        "  delivered / missing",
        f"{r_lat['received']:,} / {r_lat['missing']}",
        f"{f_lat['received']:,} / {f_lat['missing']}",
        "",
        "",
    )
    s_lat = lat.get("Relay SSE")
    if s_lat is not None:
        table.add_row(
            f"SSE push latency p50 / p99, {cfg['sse_streams']:,} streams, {s_lat['rate_per_s']:,} events/s",
            f"{s_lat['p50_ms']} / {s_lat['p99_ms']} ms",
            "-",
            f"p99 < {TARGET_P99_MS:g} ms",
            ok(s_lat["p99_ms"] is not None and s_lat["p99_ms"] < TARGET_P99_MS),
        )
        table.add_row("  server CPU per event at that rate", f"{s_lat['server_cpu_us_per_event']} µs", "-", "", "")
        table.add_row("  delivered / missing", f"{s_lat['received']:,} / {s_lat['missing']}", "-", "", "")
    share = r_fan["per_s"] / max(1, f_fan["per_s"])
    table.add_row(
        f"fan-out, {cfg['fanout']:,} events as fast as possible",
        f"{r_fan['per_s']:,} /s",
        f"{f_fan['per_s']:,} /s",
        f">= {TARGET_FANOUT_SHARE:.0%} of floor",
        f"{ok(share >= TARGET_FANOUT_SHARE)} ({share:.0%})",
    )
    table.add_row(
        "  server CPU per event (share of a core)",
        f"{r_fan['server_cpu_us_per_event']} µs ({r_fan['server_cpu_share']:.0%})",
        f"{f_fan['server_cpu_us_per_event']} µs ({f_fan['server_cpu_share']:.0%})",
        "",
        "",
    )
    quiet = result.get("fanout_no_acks")
    if quiet is not None:
        table.add_row(
            "  Relay with clients not acking (what acks cost; diagnostic)",
            f"{quiet['per_s']:,} /s, {quiet['server_cpu_us_per_event']} µs",
            "",
            "",
            "",
        )
    table.add_row(
        "  delivered / missing; p99 (a backlog: the publisher outruns the server)",
        f"{r_fan['received']:,} / {r_fan['missing']}; {r_fan['p99_ms']} ms",
        f"{f_fan['received']:,} / {f_fan['missing']}; {f_fan['p99_ms']} ms",
        "",
        "",
    )
    r_mem = mem["Relay"]
    table.add_row(
        f"memory per idle socket, {cfg['idle_sockets']:,} sockets offering deflate",
        f"{r_mem['kb_per_socket']} KB",
        f"{mem['floor']['kb_per_socket']} KB (deflate off), {mem['floor, deflate accepted']['kb_per_socket']} KB"
        " (deflate on)",
        f"< {TARGET_KB_PER_SOCKET:g} KB",
        ok(r_mem["kb_per_socket"] < TARGET_KB_PER_SOCKET),
    )
    table.add_row(
        "  sockets held; connect rate",
        f"{r_mem['sockets']:,}; {r_mem['connect_per_s']:,}/s",
        f"{mem['floor']['sockets']:,}; {mem['floor']['connect_per_s']:,}/s  /  "
        f"{mem['floor, deflate accepted']['sockets']:,}; {mem['floor, deflate accepted']['connect_per_s']:,}/s",
        "",
        "",
    )
    table.add_row(
        f"end to end via a worker: submit -> task.completed, {e2e['tasks']} echo tasks at {e2e['rate_per_s']:g}/s",
        f"{e2e['p50_ms']} / {e2e['p99_ms']} ms (p50 / p99)",
        "-",
        "",
        f"{e2e['completed']}/{e2e['submitted']} completed; {e2e['finished_before_subscribe']} done before subscribe",
    )
    loop = result.get("ws_only")
    if loop is not None:
        table.add_row(
            f"WebSocket-only tasks, closed loop, {loop['in_flight']} in flight: submit -> task.completed acked",
            f"{loop['per_s']:,} tasks/s, {loop['p50_ms']} / {loop['p99_ms']} ms",
            "-",
            "",
            f"{loop['completed']}/{loop['submitted']} completed; {loop['finished_before_subscribe']} done before "
            "subscribe",
        )
    console.print(table)
    if loop is not None:
        print_task_cost(console, loop, webhooks)
    split = "; ".join(f"{name} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms" for name, v in e2e["split"].items())
    console.print(f"End to end, split: {split}", highlight=False)
    tasks = result["tasks"]
    note = (
        f"{tasks['made']:,} tasks made through the API in {tasks['seconds']} s"
        + (
            f"; only {tasks['made']:,} of {tasks['wanted']:,}: sockets share tasks"
            if tasks["made"] < tasks["wanted"]
            else ""
        )
        + ". Relay's events: task.progress on relay:live:{task_id}, acked by the clients."
    )
    console.print(note, highlight=False)

    cpu = Table(title="CPU seconds per process group (% of one core over the phase)", title_justify="left")
    cpu.add_column("group")
    phases = [
        ("e2e", e2e),
        ("latency floor", f_lat),
        ("latency Relay", r_lat),
        ("fan-out floor", f_fan),
        ("fan-out Relay", r_fan),
    ]
    if s_lat is not None:
        phases.insert(3, ("latency SSE", s_lat))
    if loop is not None:
        phases.insert(1, ("ws-only loop", loop))
    for name, _ in phases:
        cpu.add_column(name, justify="right")
    for group in GROUPS:
        cells = [
            f"{p['cpu_s'][group]:.2f} ({100 * p['cpu_s'][group] / max(p['cpu_wall_s'], 1e-9):.0f}%)" for _, p in phases
        ]
        cpu.add_row("rest of box" if group == "other" else group, *cells)
    console.print(cpu)
    busy = [
        f"{name} ({100 * p['cpu_s']['other'] / max(p['cpu_wall_s'], 1e-9):.0f}% of a core)"
        for name, p in phases
        if p["cpu_s"]["other"] / max(p["cpu_wall_s"], 1e-9) > OTHER_LOAD_WARN
    ]
    if busy:
        console.print(
            f"[yellow]Other work on the box[/] during {', '.join(busy)}: latency and rates there are disturbed; "
            "CPU per event (the server's own /proc time) much less so.",
            highlight=False,
        )

    problems = []
    for name, m in mem.items():
        if m["failures"]:
            problems.append(f"memory {name}: connect/subscribe failures {m['failures']}")
        if m["sockets"] < m["wanted"]:
            problems.append(f"memory {name}: {m['sockets']:,} of {m['wanted']:,} sockets subscribed")
    for name, c in result["connect"].items():
        if c["failures"]:
            problems.append(f"{name}: connect/subscribe failures {c['failures']}")
    no_acks = {"Relay": result["fanout_no_acks"]} if "fanout_no_acks" in result else {}
    for phase, figures in (("latency", lat), ("fan-out", fan), ("fan-out without acks", no_acks)):
        for name, f in figures.items():
            if f["missing"]:
                problems.append(f"{phase} {name}: {f['missing']} events missing")
            if f["closes"]:
                problems.append(f"{phase} {name}: sockets closed {f['closes']}")
            if f["errors"]:
                problems.append(f"{phase} {name}: error frames {f['errors']}")
    if e2e["failures"]:
        problems.append(f"e2e: {e2e['failures']}")
    if loop is not None:
        if loop["failures"]:
            problems.append(f"WebSocket-only loop: {loop['failures']}")
        settled = {k: v for k, v in loop["deliveries"].items() if k != "websocket acked"}
        if loop["deliveries"].get("websocket acked", 0) < loop["completed"] or settled:
            problems.append(
                f"WebSocket-only loop: {loop['completed']} tasks completed, deliveries {loop['deliveries']} "
                "(each should be one websocket ack)"
            )
    if result["tasks"]["errors"]:
        problems.append(f"making tasks: {result['tasks']['errors']}")
    for name, found in result.get("logs", {}).items():
        if found["counts"]:
            problems.append(f"{name} log: {found['counts']}")
            problems.extend(f"    {line}" for line in found["samples"])
    console.print("\n[bold]Seen[/]: " + ("nothing amiss" if not problems else ""))
    for line in problems:
        console.print(f"  {line}", highlight=False, soft_wrap=True)

    for name, spots in result.get("profile", {}).items():
        console.print(f"\n[bold]py-spy --gil: {name}[/] ({spots['samples']} samples holding the GIL, {spots['while']})")
        for title, key in (
            ("own time by package", "packages"),
            ("own time by function", "own"),
            ("Relay's functions, including callees", "ours"),
        ):
            if spots[key]:
                console.print(f"  {title}:", highlight=False)
                for func, pct in spots[key]:
                    console.print(f"    {pct:5.1f}%  {func}", highlight=False, soft_wrap=True)
        console.print(f"  raw: {spots['file']}", highlight=False, soft_wrap=True)


def print_task_cost(console: Console, loop: dict[str, Any], webhooks: dict[str, Any] | None) -> None:
    """Service CPU per WebSocket-only task, beside a webhook task's (the webhook throughput phase) when there is one."""
    from rich.table import Table

    webhook = webhooks["throughput"]["cpu_us_per_task"] if webhooks is not None else None
    table = Table(title="Service CPU µs per task: WebSocket-only beside webhook", title_justify="left")
    table.add_column("group")
    table.add_column(f"WebSocket-only (closed loop, {loop['in_flight']} in flight)", justify="right")
    if webhook is not None:
        table.add_column("webhook (throughput phase)", justify="right")
        table.add_column("WebSocket ÷ webhook", justify="right")
    for group in (*SERVICE_GROUPS, "service"):
        ours = loop["cpu_us_per_task"][group]
        label = "service (api + worker + redis)" if group == "service" else group
        cells = [f"{ours:,}"]
        if webhook is not None:
            cells += [f"{webhook[group]:,}", f"{ours / webhook[group]:.2f}" if webhook[group] else "-"]
        table.add_row(label, *cells, style="bold" if group == "service" else None)
    console.print(table)
