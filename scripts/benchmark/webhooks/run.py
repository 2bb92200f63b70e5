"""The webhook figures on a stack of their own: Redis, the receiver, ``relay api`` and ``relay worker``; with
``--cluster`` the throughput phase again on a Redis Cluster; then the naive peer's throughput on the same
receiver."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.benchmark.meter import BrokerCpuMeter, CpuMeter, box_speed
from scripts.benchmark.profiling import Profiler, hot_spots
from scripts.benchmark.redis_cluster import slot_ranges
from scripts.benchmark.stack import (
    API_KEY,
    RELAY,
    Stack,
    http_ok,
    log,
    log_findings,
    new_loop,
    start_broker,
    start_redis,
    wait_until,
)
from scripts.benchmark.webhooks import on_cluster
from scripts.benchmark.webhooks.client import Client
from scripts.benchmark.webhooks.peer import PREFIX, PeerCpuMeter, start_peer, stop_relay
from scripts.benchmark.webhooks.phases import phase_bad_day, phase_ceiling, phase_paced, phase_throughput, warm_up
from scripts.benchmark.webhooks.receiver import HANG_S
from scripts.benchmark.webhooks.report import ms
from service.processes import free_port


def start_stack(stack: Stack, args: argparse.Namespace, receiver_port: int, tenants: dict[str, str]) -> dict[str, str]:
    """Start Redis (and with ``--cluster`` a Redis of the broker's own), the receiver, the API and the workers, with
    ``tenants`` (name -> API key); return the URLs."""
    urls = {"redis": start_redis(stack)}
    stack.env["RELAY_API_KEYS"] = ",".join(f"{tenant}={key}" for tenant, key in tenants.items())
    if args.cluster:
        urls["broker"] = start_broker(stack)
    hang_port, dead_port = free_port(), free_port()

    receiver = stack.start(
        "receiver",
        [
            sys.executable,
            "-m",
            "scripts.benchmark.webhooks.receiver",
            str(receiver_port),
            str(hang_port),
            str(dead_port),
        ],
    )
    wait_until(receiver, lambda: http_ok(f"http://127.0.0.1:{receiver_port}/count"), "answer")
    return {
        **urls,
        "api": start_relay(stack, args),
        "receiver": f"http://127.0.0.1:{receiver_port}",
        "hook": f"http://127.0.0.1:{receiver_port}/hook",
        "hang": f"http://127.0.0.1:{hang_port}/hook",
        "dead": f"http://127.0.0.1:{dead_port}/hook",
    }


def start_relay(stack: Stack, args: argparse.Namespace, prefix: str = "") -> str:
    """Start ``relay api`` and ``relay worker`` (named ``<prefix>api`` and ``<prefix>worker`` in the stack) on the
    stack's environment and wait until both are ready; return the API's URL."""
    api_port = free_port()
    api_argv = [RELAY, "api", "--host", "127.0.0.1", "--port", str(api_port), "--workers", str(args.api_workers)]
    api = stack.start(f"{prefix}api", api_argv)
    worker = stack.start(
        f"{prefix}worker", [RELAY, "worker", "--processes", str(args.worker_processes), "--threads", str(args.threads)]
    )
    wait_until(api, lambda: http_ok(f"http://127.0.0.1:{api_port}/health"), "200 on /health")

    def workers_ready() -> bool:
        text = worker.log_path.read_text(errors="replace")
        ready: int = text.count("Worker process is ready for action.")
        return ready >= int(args.worker_processes)

    wait_until(worker, workers_ready, "'ready for action'")
    return f"http://127.0.0.1:{api_port}"


def cancel_on_sigterm() -> None:
    """SIGTERM cancels the running task as Ctrl-C does (asyncio.Runner handles SIGINT); then everything stops."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)


async def run(stack: Stack, urls: dict[str, str], api_keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cancel_on_sigterm()
    client = Client(urls, api_keys)
    meter = BrokerCpuMeter(stack) if args.cluster else CpuMeter(stack)
    meter.read()  # learn every process of each tree
    speed = [box_speed()]

    log(f"ceiling: {args.tasks} signed webhooks straight to the receiver ...")
    ceiling = await phase_ceiling(client, meter, args.tasks)
    log(f"  {ceiling['req_per_s']:,} req/s")

    await warm_up(client, warm_up_tasks(args), args.timeout)
    profiler = Profiler(stack, args.profile) if args.profile else None
    tenants = f" of {client.tenants} tenants in turn" if client.tenants > 1 else ""
    log(f"throughput: {args.tasks} echo tasks{tenants}, {args.concurrency} in flight ...")
    thr = await phase_throughput(client, meter, args.tasks, args.concurrency, args.timeout, profiler)
    log(
        f"  submit {thr['submit_per_s']:,}/s, end to end {thr['end_to_end_per_s']:,}/s, "
        f"p50 {ms(thr['p50_ms'])}, p99 {ms(thr['p99_ms'])}, missing {thr['missing']}"
    )

    speed.append(box_speed())
    rate = args.rate or max(1.0, thr["end_to_end_per_s"] / 2)
    log(f"half rate: {rate:,.0f} tasks/s open loop for {args.paced_s:g} s ...")
    paced = await phase_paced(client, meter, rate, args.paced_s, args.timeout)
    log(f"  p50 {ms(paced['p50_ms'])}, p99 {ms(paced['p99_ms'])}, missing {paced['missing']}")

    bad_day = None
    if args.bad_day:
        log(
            f"bad day: {args.bad_owed:,} webhooks owed to a receiver that answers in {HANG_S:g} s and "
            f"{args.bad_owed:,} to one that drops connections; the quiet day's phases again ..."
        )
        bad_day = await phase_bad_day(client, meter, args, rate)
        bt, bp = bad_day["throughput"], bad_day["paced"]
        log(
            f"  end to end {bt['end_to_end_per_s']:,}/s, p50 {ms(bt['p50_ms'])}, p99 {ms(bt['p99_ms'])}; "
            f"half rate p50 {ms(bp['p50_ms'])}, p99 {ms(bp['p99_ms'])}; "
            f"the dead one got {bad_day['dead_connections']} connections in {bad_day['seconds']:g} s"
        )

    speed.append(box_speed())
    result: dict[str, Any] = {
        "box_speed": speed,
        "config": {
            "tasks": args.tasks,
            "concurrency": args.concurrency,
            "api_workers": args.api_workers,
            "worker_processes": args.worker_processes,
            "threads": args.threads,
            "paced_s": args.paced_s,
            "cpus": os.cpu_count(),
            "tenants": client.tenants,
            "broker": "own redis" if "broker" in urls else "in storage",
        },
        "ceiling": ceiling,
        "throughput": thr,
        "paced": paced,
    }
    if bad_day is not None:
        result["bad_day"] = bad_day
    if profiler is not None:
        result["profile"] = {
            name: {**hot_spots(path, args.top), "file": str(path)}
            for name, path in profiler.files.items()
            if path.exists()
        }
    return result


async def run_peer(stack: Stack, urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """The throughput phase again, the same driver against the naive peer: same -n, concurrency and receiver."""
    cancel_on_sigterm()
    client, meter = Client(urls), PeerCpuMeter(stack)
    meter.read()
    await warm_up(client, warm_up_tasks(args), args.timeout)
    log(f"peer throughput: {args.tasks} echo tasks, {args.concurrency} in flight ...")
    thr = await phase_throughput(client, meter, args.tasks, args.concurrency, args.timeout, None)
    log(
        f"  submit {thr['submit_per_s']:,}/s, end to end {thr['end_to_end_per_s']:,}/s, "
        f"p50 {ms(thr['p50_ms'])}, p99 {ms(thr['p99_ms'])}, missing {thr['missing']}"
    )
    return thr


async def run_on_cluster(
    stack: Stack, urls: dict[str, str], nodes: list[str], api_keys: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """The throughput phase again, on the cluster: same driver, receiver, broker, tenants, -n and concurrency."""
    cancel_on_sigterm()
    client, meter = Client(urls, api_keys), on_cluster.ClusterCpuMeter(stack)
    meter.read()
    speed = [box_speed()]
    await warm_up(client, warm_up_tasks(args), args.timeout)
    log(
        f"cluster throughput: {args.tasks} echo tasks of {client.tenants} tenants in turn, "
        f"{args.concurrency} in flight ..."
    )
    thr = await phase_throughput(client, meter, args.tasks, args.concurrency, args.timeout, None)
    log(
        f"  submit {thr['submit_per_s']:,}/s, end to end {thr['end_to_end_per_s']:,}/s, "
        f"p50 {ms(thr['p50_ms'])}, p99 {ms(thr['p99_ms'])}, missing {thr['missing']}"
    )
    speed.append(box_speed())
    figures = on_cluster.cluster_figures(thr, slot_ranges(nodes[0]), on_cluster.keys_held(nodes), args)
    return {"box_speed": speed, "throughput": thr, **figures}


def measure_on_cluster(
    stack: Stack, runner: asyncio.Runner, urls: dict[str, str], api_keys: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Stop the standalone Relay, start a cluster and Relay on it, measure, stop them; a cluster that fails says why
    instead of ending the run."""
    log(
        f"cluster: stopping relay's api, worker and redis; starting a cluster of {args.masters} masters "
        f"({args.partitions} partitions), api, worker ..."
    )
    result: dict[str, Any] = {"masters": args.masters, "partitions": args.partitions, "tenants": len(api_keys)}
    try:
        nodes = on_cluster.switch_to_cluster(stack, args, urls["broker"])
        api_url = start_relay(stack, args, on_cluster.PREFIX)
        cluster_urls = {**urls, "redis": stack.env["RELAY_REDIS_URL"], "api": api_url}
        result.update(runner.run(run_on_cluster(stack, cluster_urls, nodes, api_keys, args)))
    except RuntimeError as exc:
        log(f"cluster failed: {exc}")
        result["error"] = str(exc)
    result["logs"] = {
        name.removeprefix(on_cluster.PREFIX): log_findings(service.log_path)
        for name, service in stack.services.items()
        if name in (f"{on_cluster.PREFIX}api", f"{on_cluster.PREFIX}worker")
    }
    on_cluster.stop_cluster(stack)
    return result


def warm_up_tasks(args: argparse.Namespace) -> int:
    return min(200, max(10, int(args.tasks) // 10))


def measure_peer(
    stack: Stack, runner: asyncio.Runner, urls: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Stop Relay, start the naive peer and measure it; a peer that fails says why instead of ending the run."""
    log("peer: stopping relay's api, worker and redis; starting the naive peer's redis, api, worker ...")
    stop_relay(stack)
    peer: dict[str, Any] = {}
    try:
        peer["throughput"] = runner.run(run_peer(stack, start_peer(stack, args, urls), args))
    except RuntimeError as exc:
        log(f"peer failed: {exc}")
        peer["error"] = str(exc)
    peer["logs"] = {
        name.removeprefix(PREFIX): log_findings(service.log_path)
        for name, service in stack.services.items()
        if name in (f"{PREFIX}api", f"{PREFIX}worker")
    }
    return peer


def run_webhooks(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """The webhook figures (ceiling, throughput, half rate, the bad day) on a stack of their own; with ``--cluster``
    the throughput phase again on a Redis Cluster; then the naive peer's throughput."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    stack = Stack(workdir, dict(os.environ))
    failed = True
    receiver_port = free_port()
    # With --cluster, both halves submit for many tenants in turn (each a destination at the receiver), placed so
    # that their tasks spread over the cluster's partitions.
    tenants = {"bench": API_KEY}
    if args.cluster:
        tenants = on_cluster.spread_tenants(f"http://127.0.0.1:{receiver_port}", args.tenants, args.partitions)
    try:
        log(f"webhooks: starting redis{', a broker redis' if args.cluster else ''}, receiver, api, worker ...")
        urls = start_stack(stack, args, receiver_port, tenants)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(run(stack, urls, list(tenants.values()), args))
            if args.cluster:
                result["cluster"] = measure_on_cluster(stack, runner, urls, list(tenants.values()), args)
            if args.peer:
                result["peer"] = measure_peer(stack, runner, urls, args)
        # Keep the logs of a half that failed.
        failed = any("error" in result.get(half, {}) for half in ("cluster", "peer"))
    except (KeyboardInterrupt, asyncio.CancelledError):
        failed = False  # nothing to look into
        log("interrupted")
        return 130, None
    except RuntimeError as exc:
        log(f"bench failed: {exc}")
        return 1, None
    finally:
        log("stopping ...")
        stack.stop_all()
        if args.keep_logs or failed:
            log(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    lost = result["throughput"]["missing"] + result["paced"]["missing"]
    if "bad_day" in result:
        lost += result["bad_day"]["throughput"]["missing"] + result["bad_day"]["paced"]["missing"]
    if "throughput" in result.get("cluster", {}):
        lost += result["cluster"]["throughput"]["missing"]
    return (1 if lost or failed else 0), result
