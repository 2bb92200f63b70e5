"""The WebSocket figures on a stack of their own: Redis, ``relay api``, ``relay worker``, the floors, the clients."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.benchmark.stack import RELAY, Stack, http_ok, log, log_findings, new_loop, start_redis, wait_until
from scripts.benchmark.ws.control import (
    FLOOR_DEFLATE_PREFIX,
    FLOOR_PREFIX,
    RELAY_PREFIX,
    ClientProc,
    CpuMeter,
    Publisher,
    Target,
    call_all,
    connect,
    make_tasks,
)
from scripts.benchmark.ws.phases import (
    phase_e2e,
    phase_fanout,
    phase_latency,
    phase_memory,
    phase_ws_only,
    profiled_fanout,
    profiled_ws_only,
)
from service.processes import free_port


def start_floor(stack: Stack, name: str, redis_url: str, prefix: str, deflate: bool) -> Target:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "scripts.benchmark.ws.floor",
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--prefix",
        prefix,
    ]
    service = stack.start(name, [*argv, "--deflate"] if deflate else argv)
    wait_until(
        service, lambda: "Application startup complete" in service.log_path.read_text(errors="replace"), "startup"
    )
    label = "floor, deflate accepted" if deflate else "floor"
    return Target(label, name, f"ws://127.0.0.1:{port}/ws", prefix, relay=False)


def start_stack(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    redis_url = start_redis(stack)
    api_port = free_port()
    api = stack.start("api", [RELAY, "api", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"])
    worker = stack.start(
        "worker", [RELAY, "worker", "--processes", str(args.worker_processes), "--threads", str(args.threads)]
    )
    floor = start_floor(stack, "floor", redis_url, FLOOR_PREFIX, deflate=False)
    floor_deflate = start_floor(stack, "floor_deflate", redis_url, FLOOR_DEFLATE_PREFIX, deflate=True)
    wait_until(api, lambda: http_ok(f"http://127.0.0.1:{api_port}/health"), "200 on /health")
    wait_until(
        worker,
        lambda: (
            worker.log_path.read_text(errors="replace").count("Worker process is ready for action.")
            >= args.worker_processes
        ),
        "'ready for action'",
    )
    return {
        "redis": redis_url,
        "api": f"http://127.0.0.1:{api_port}",
        "relay": Target("Relay", "api", f"ws://127.0.0.1:{api_port}/v1/ws", RELAY_PREFIX, relay=True),
        "floor": floor,
        "floor_deflate": floor_deflate,
    }


def start_clients(stack: Stack, n: int) -> list[ClientProc]:
    procs = []
    for i in range(n):
        path = stack.workdir / f"client{i}.sock"
        service = stack.start(f"client{i}", [sys.executable, "-m", "scripts.benchmark.ws.client", str(path)])
        procs.append(ClientProc(service, path))
    for proc in procs:
        wait_until(proc.service, _says_ready(proc.service.log_path), "ready")
    return procs


def _says_ready(log_path: Path) -> Callable[[], bool]:
    return lambda: "ready" in log_path.read_text(errors="replace")


async def run(
    stack: Stack, urls: dict[str, Any], clients: list[ClientProc], args: argparse.Namespace
) -> dict[str, Any]:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    for client in clients:
        await client.open()
    meter = CpuMeter(stack)
    meter.read()
    relay, floor, floor_deflate = urls["relay"], urls["floor"], urls["floor_deflate"]
    result: dict[str, Any] = {
        "config": {
            "sockets": args.ws_sockets,
            "idle_sockets": args.ws_idle_sockets,
            "rate": args.ws_rate,
            "latency_s": args.ws_latency_s,
            "fanout": args.ws_fanout,
            "sse_streams": args.ws_sse_streams,
            "clients": len(clients),
            "cpus": os.cpu_count(),
        }
    }

    log(f"ws end to end: {args.ws_e2e_tasks} echo tasks at {args.ws_e2e_rate:g}/s through a worker ...")
    e2e = await phase_e2e(clients, urls, meter, args.ws_e2e_tasks, args.ws_e2e_rate)
    result["e2e"] = e2e
    log(f"  p50 {e2e['p50_ms']} ms, p99 {e2e['p99_ms']} ms, completed {e2e['completed']}/{e2e['submitted']}")
    log(f"ws-only tasks: {args.tasks} echo tasks, {args.concurrency} in flight, each acked on its socket ...")
    ws_only = await phase_ws_only(clients, urls, meter, args.tasks, args.concurrency)
    result["ws_only"] = ws_only
    log(
        f"  {ws_only['per_s']:,} tasks/s, p50 {ws_only['p50_ms']} ms, p99 {ws_only['p99_ms']} ms, "
        f"completed {ws_only['completed']}/{ws_only['submitted']}, "
        f"service {ws_only['cpu_us_per_task']['service']:,} µs/task, deliveries {ws_only['deliveries']}"
    )
    result["profile"] = {}
    if args.profile:
        log("ws-only tasks again, with py-spy on the API and worker ...")
        result["profile"] |= await profiled_ws_only(
            stack, clients, urls, meter, args.tasks, args.concurrency, args.profile / "ws-only", args.top
        )
    stack.services["worker"].stop()  # from here on the tasks stay queued: only the bench publishes events

    wanted = max(args.ws_idle_sockets, args.ws_sockets, args.ws_sse_streams)
    log(f"ws: making {wanted:,} websocket tasks through the API (worker stopped: they stay queued) ...")
    tasks, took, errors = await make_tasks(urls["api"], wanted)
    if not tasks:
        raise RuntimeError(f"no task could be made: {errors}")
    result["tasks"] = {"made": len(tasks), "wanted": wanted, "seconds": round(took, 2), "errors": errors}
    log(f"  {len(tasks):,} in {took:.1f} s ({len(tasks) / took:,.0f}/s)" + (f", errors {errors}" if errors else ""))
    idle_subs = [tasks[i % len(tasks)] for i in range(args.ws_idle_sockets)]  # sockets share tasks if too few
    subs = [tasks[i % len(tasks)] for i in range(args.ws_sockets)]

    memory: dict[str, Any] = {}
    for target in (floor_deflate, floor, relay):
        log(f"ws memory: {args.ws_idle_sockets:,} idle sockets offering deflate -> {target.name} ...")
        memory[target.name] = await phase_memory(stack, clients, target, idle_subs, args)
        m = memory[target.name]
        failures = f", failures {m['failures']}" if m["failures"] else ""
        log(f"  {m['sockets']:,} subscribed in {m['connect_seconds']} s, {m['kb_per_socket']} KB/socket{failures}")
    stack.services["floor_deflate"].stop()
    result["memory"] = memory

    publisher = Publisher(urls["redis"], sorted({t for t, _ in subs}))
    result["latency"], result["fanout"], result["connect"] = {}, {}, {}
    try:
        for target in (floor, relay):
            log(f"ws: {len(subs):,} sockets -> {target.name} ...")
            opened = await connect(clients, target, subs, compress=False, concurrency=args.ws_connect_concurrency)
            result["connect"][target.name] = opened
            if opened["failures"]:
                log(f"  connect failures: {opened['failures']}")
            await asyncio.sleep(0.5)
            lat = await phase_latency(clients, target, publisher, meter, args.ws_rate, args.ws_latency_s)
            result["latency"][target.name] = lat
            log(
                f"  latency at {lat['rate_per_s']:,}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
                f"{lat['server_cpu_us_per_event']} µs/event, missing {lat['missing']}"
            )
            fan = await phase_fanout(clients, target, publisher, meter, args.ws_fanout)
            result["fanout"][target.name] = fan
            log(
                f"  fan-out {fan['per_s']:,} events/s, {fan['server_cpu_us_per_event']} µs/event, "
                f"missing {fan['missing']}"
            )
            if target.relay:
                # What the acks cost: the same round with clients that do not ack (not how Relay is used).
                await asyncio.gather(*(c.call("acks", on=False) for c in clients))
                quiet = await phase_fanout(clients, target, publisher, meter, args.ws_fanout)
                await asyncio.gather(*(c.call("acks", on=True) for c in clients))
                result["fanout_no_acks"] = quiet
                log(f"  fan-out without acks {quiet['per_s']:,} events/s, {quiet['server_cpu_us_per_event']} µs/event")
            if args.profile:
                log(f"  profiling {target.name} during one more fan-out round ...")
                result["profile"][target.name] = await profiled_fanout(
                    stack, clients, target, publisher, meter, args.ws_fanout, args.profile, args.top
                )
            await call_all(clients, "close")
    finally:
        await publisher.close()

    if args.ws_sse_streams:
        # The same latency phase with every task followed over Server-Sent Events instead of a socket.
        streams = [tasks[i % len(tasks)] for i in range(args.ws_sse_streams)]
        target = Target("Relay SSE", "api", urls["api"], RELAY_PREFIX, relay=True, sse=True)
        sse_publisher = Publisher(urls["redis"], sorted({t for t, _ in streams}))
        try:
            log(f"sse: {len(streams):,} event streams -> Relay ...")
            opened = await connect(clients, target, streams, compress=False, concurrency=args.ws_connect_concurrency)
            result["connect"][target.name] = opened
            if opened["failures"]:
                log(f"  connect failures: {opened['failures']}")
            await asyncio.sleep(0.5)
            lat = await phase_latency(clients, target, sse_publisher, meter, args.ws_rate, args.ws_latency_s)
            result["latency"][target.name] = lat
            log(
                f"  latency at {lat['rate_per_s']:,}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
                f"{lat['server_cpu_us_per_event']} µs/event, missing {lat['missing']}"
            )
            await call_all(clients, "close")
        finally:
            await sse_publisher.close()
    return result


def run_bench(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-ws-"))
    stack = Stack(workdir, dict(os.environ))
    failed = True
    result: dict[str, Any] | None = None
    try:
        log("ws: starting redis, api, worker, floors, clients ...")
        urls = start_stack(stack, args)
        clients = start_clients(stack, args.ws_clients)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(run(stack, urls, clients, args))
        failed = False
    except (KeyboardInterrupt, asyncio.CancelledError):
        failed = False
        log("interrupted")
        return 130, None
    except RuntimeError as exc:
        log(f"ws bench failed: {exc}")
        return 1, None
    finally:
        log("stopping ...")
        if result is not None:
            result["logs"] = {
                name: log_findings(stack.services[name].log_path)
                for name in ("api", "floor", "floor_deflate", "worker")
                if name in stack.services
            }
        stack.stop_all()
        if args.keep_logs or failed:
            log(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    relay_lost = (
        result["latency"]["Relay"]["missing"]
        + result["latency"].get("Relay SSE", {}).get("missing", 0)
        + result["fanout"]["Relay"]["missing"]
        + (result["e2e"]["submitted"] - result["e2e"]["completed"])
        + (result["ws_only"]["submitted"] - result["ws_only"]["completed"])
    )
    return (1 if relay_lost else 0), result
