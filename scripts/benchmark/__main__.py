"""Benchmark Relay end to end on this machine.

The command line of ``scripts/bench``: ``python -m scripts.benchmark [options]`` from the repository's root.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from delivery.keys import MAX_PARTITIONS
from scripts.benchmark import stats as stats_bench
from scripts.benchmark.redis_cluster import MIN_MASTERS
from scripts.benchmark.webhooks import on_cluster
from scripts.benchmark.webhooks import report as webhooks_report
from scripts.benchmark.webhooks.run import run_webhooks
from scripts.benchmark.ws import report as ws_report
from scripts.benchmark.ws.run import run_bench as run_ws

DEFAULT_TASKS = 5000
DEFAULT_CONCURRENCY = 64
# How long the paced phase submits for.
DEFAULT_PACED_S = 5.0
# Webhooks owed to each of the two bad destinations on the bad day.
DEFAULT_BAD_OWED = 3000
# How long to wait for the last webhooks of a phase after its last submit.
DEFAULT_DRAIN_TIMEOUT_S = 30.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-n",
        "--tasks",
        type=int,
        default=DEFAULT_TASKS,
        help="tasks of the throughput phases (Relay's, the naive peer's, the WebSocket-only loop; ceiling webhooks)",
    )
    parser.add_argument(
        "-c", "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="submissions in flight in those phases"
    )
    parser.add_argument("--rate", type=float, help="paced phase rate (default: half the end-to-end rate)")
    parser.add_argument("--paced-s", type=float, default=DEFAULT_PACED_S, help="paced phase duration")
    parser.add_argument("--timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, help="wait for webhooks, s")
    parser.add_argument("--api-workers", type=int, default=1, help="relay api --workers")
    parser.add_argument("--worker-processes", type=int, default=1, help="relay worker --processes")
    parser.add_argument("--threads", type=int, default=16, help="relay worker --threads")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the API and worker in the throughput phase")
    parser.add_argument("--top", type=int, default=12, help="hot spots to show with --profile")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument(
        "--no-bad-day", dest="bad_day", action="store_false", help="skip the bad day (a hanging and a dead receiver)"
    )
    parser.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="skip the naive peer (Litestar + Dramatiq + sync httpx, run after Relay on the same receiver)",
    )
    parser.add_argument(
        "--bad-owed", type=int, default=DEFAULT_BAD_OWED, help="webhooks owed to each bad receiver on the bad day"
    )
    cl = parser.add_argument_group("a Redis Cluster beside the standalone Redis (--cluster, with the webhook figures)")
    cl.add_argument(
        "--cluster",
        action="store_true",
        help="the throughput phase again on a Redis Cluster (redis-server 7+ on PATH), set beside the standalone "
        "Redis's; both with a broker Redis of its own and many tenants",
    )
    cl.add_argument("--masters", type=int, default=on_cluster.DEFAULT_MASTERS, help="the cluster's masters")
    cl.add_argument(
        "--partitions", type=int, default=on_cluster.DEFAULT_PARTITIONS, help="RELAY_PARTITIONS on the cluster"
    )
    cl.add_argument(
        "--tenants", type=int, default=on_cluster.DEFAULT_TENANTS, help="tenants the throughput phase submits for"
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--all", dest="mode", action="store_const", const="all", help="webhooks and WebSocket (default)")
    modes.add_argument("--webhooks", dest="mode", action="store_const", const="webhooks", help="webhook figures only")
    modes.add_argument("--ws", dest="mode", action="store_const", const="ws", help="WebSocket figures only")
    modes.add_argument(
        "--stats", dest="mode", action="store_const", const="stats", help="the cost of GET /v1/stats on a big store"
    )
    parser.set_defaults(mode="all")
    st = parser.add_argument_group("GET /v1/stats (--stats)")
    st.add_argument("--stats-dead-letters", type=int, default=100_000, help="dead letters stored")
    st.add_argument("--stats-destinations", type=int, default=1000, help="destinations stored")
    st.add_argument("--stats-calls", type=int, default=500, help="calls back to back, as admin and as tenant")
    st.add_argument("--stats-computed", type=int, default=15, help="calls a second apart (each computed afresh)")
    st.add_argument("--stats-pollers", type=int, default=50, help="consoles polling once a second")
    ws = parser.add_argument_group("WebSocket figures (--ws)")
    ws.add_argument("--ws-sockets", type=int, default=1000, help="subscribed sockets for latency and fan-out")
    ws.add_argument("--ws-rate", type=float, default=1000.0, help="events/s across the sockets, latency phase")
    ws.add_argument("--ws-latency-s", type=float, default=4.0, help="how long the latency phase publishes")
    ws.add_argument("--ws-fanout", type=int, default=30000, help="events published as fast as possible, fan-out")
    ws.add_argument("--ws-idle-sockets", type=int, default=10000, help="idle sockets for the memory figure")
    ws.add_argument(
        "--ws-sse-streams", type=int, default=1000, help="Server-Sent Event streams for their latency (0: skip)"
    )
    ws.add_argument("--ws-e2e-tasks", type=int, default=300, help="echo tasks timed through a real worker")
    ws.add_argument("--ws-e2e-rate", type=float, default=100.0, help="their submit rate, tasks/s")
    ws.add_argument("--ws-clients", type=int, default=4, help="client processes holding the sockets")
    ws.add_argument("--ws-connect-concurrency", type=int, default=12, help="sockets opening at once per client")
    args = parser.parse_args(argv)
    for name in (
        "tasks",
        "concurrency",
        "api_workers",
        "worker_processes",
        "threads",
        "ws_sockets",
        "ws_fanout",
        "ws_idle_sockets",
        "ws_e2e_tasks",
        "ws_clients",
        "ws_connect_concurrency",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cluster:
        if args.mode not in ("all", "webhooks"):
            parser.error("--cluster goes with the webhook figures (--webhooks or --all)")
        if args.masters < MIN_MASTERS:
            parser.error(f"--masters must be at least {MIN_MASTERS} (redis-cli --cluster create refuses fewer)")
        if not args.masters <= args.partitions <= MAX_PARTITIONS:
            parser.error(f"--partitions must be from --masters ({args.masters}) to {MAX_PARTITIONS}")
        if args.tenants < 1:
            parser.error("--tenants must be at least 1")
    if args.ws_sse_streams < 0:
        parser.error("--ws-sse-streams must be 0 or more")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0")
    return args


def raise_fd_limit() -> None:
    """Sockets by the ten thousand: lift the soft limit on open files to the hard one (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    # Until an event loop runs, SIGTERM ends a run the way Ctrl-C does: through the runners' finally.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: dict[str, Any] = {}
    code = 0
    if args.mode == "stats":
        code, figures = stats_bench.run_stats(args)
        if figures is not None:
            print(json.dumps(figures, indent=2)) if args.json else stats_bench.print_report(figures)
        return code
    if args.mode in ("all", "webhooks"):
        code, results["webhooks"] = run_webhooks(args)
        if results["webhooks"] is None:
            return code
    if args.mode in ("all", "ws"):
        ws_code, results["ws"] = run_ws(args)
        if results["ws"] is None:
            return ws_code
        code = max(code, ws_code)
    if args.json:
        # --webhooks alone prints the summary it always printed; otherwise one object per part.
        print(json.dumps(results["webhooks"] if args.mode == "webhooks" else results, indent=2))
    else:
        if "webhooks" in results:
            webhooks_report.print_report(results["webhooks"])
        if "ws" in results:
            ws_report.print_report(results["ws"], webhooks=results.get("webhooks"))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
