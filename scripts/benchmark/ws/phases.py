"""The WebSocket bench's phases: end to end through a worker, WebSocket-only tasks in a closed loop, memory per
socket, push latency, fan-out."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from scripts.benchmark.meter import cpu_per_task, percentile, rounded
from scripts.benchmark.profiling import Profiler, hot_spots, start_py_spy, stop_py_spy
from scripts.benchmark.stack import ADMIN_TOKEN, API_KEY, Stack
from scripts.benchmark.ws.control import (
    SOCKET_TIMEOUT_S,
    ClientProc,
    CpuMeter,
    Publisher,
    Target,
    call_all,
    collect,
    connect,
    merge_failures,
    rss,
    spread,
    summary,
    wait_received,
)

# Latency phase: one pipeline of events every TICK_S.
TICK_S = 0.01
# Fan-out phase: events per pipeline.
FANOUT_BATCH = 200
# Echo tasks each client runs through the worker before the end-to-end figure is taken.
E2E_WARM_TASKS = 10
# The WebSocket-only loop: how long one task may take, the whole loop, and how long its deliveries take to show
# in /v1/stats.
TASK_TIMEOUT_S = 30.0
LOOP_TIMEOUT_S = 600.0
STATS_WAIT_S = 5.0
STATS_POLL_S = 0.3
# Sockets opened and closed on each server before its memory baseline (imports, pools, first allocations).
WARM_SOCKETS = 200
# Wait after the last socket subscribed before reading RSS.
SETTLE_S = 2.0


async def phase_e2e(
    clients: list[ClientProc], urls: dict[str, Any], meter: CpuMeter, n: int, rate: float
) -> dict[str, Any]:
    users = clients[: max(1, min(2, len(clients)))]
    shares = [len(part) for part in spread(list(range(n)), len(users))]
    timeout_s = n / rate + 30
    # Warm-up, not counted: the worker's first tasks (imports, connections) and the API's first subscribes.
    await asyncio.gather(
        *(
            c.call(
                "e2e",
                60,
                api=urls["api"],
                ws_url=urls["relay"].url,
                key=API_KEY,
                n=E2E_WARM_TASKS,
                rate=rate,
                timeout_s=30,
            )
            for c in users
        )
    )
    cpu0, t0 = meter.read(), time.perf_counter()
    replies = await asyncio.gather(
        *(
            c.call(
                "e2e",
                timeout_s + 30,
                api=urls["api"],
                ws_url=urls["relay"].url,
                key=API_KEY,
                n=share,
                rate=rate / len(users),
                timeout_s=timeout_s,
            )
            for c, share in zip(users, shares, strict=True)
        )
    )
    seconds = time.perf_counter() - t0
    cpu = meter.diff(cpu0, meter.read())
    latencies = [x for r in replies for x in r["latencies_ms"]]
    return {
        "tasks": n,
        "rate_per_s": rate,
        "submitted": sum(r["submitted"] for r in replies),
        "completed": sum(r["completed"] for r in replies),
        "finished_before_subscribe": sum(r["finished_before_subscribe"] for r in replies),
        "failures": merge_failures(list(replies)),
        **summary(latencies),
        "split": {
            name: summary([x for r in replies for x in r[key]])
            for name, key in (
                ("submit -> 202", "accept_ms"),
                ("submit -> completed event created (queue + worker)", "to_event_ms"),
                ("completed event created -> socket (live pushes only)", "push_live_ms"),
            )
        },
        "cpu_wall_s": round(seconds, 2),
        "cpu_s": cpu,
    }


async def phase_ws_only(
    clients: list[ClientProc], urls: dict[str, Any], meter: CpuMeter, n: int, in_flight: int
) -> dict[str, Any]:
    """WebSocket-only echo tasks (no webhook) in a closed loop, ``in_flight`` at once: each submitted, subscribed
    on a socket of its lane and its events acked. The service's CPU per task, in the shape of the webhook
    throughput's, and what became of the deliveries (all should be acked over WebSocket, none a webhook)."""
    users = clients[: max(1, min(2, len(clients), in_flight))]
    shares = [len(part) for part in spread(list(range(n)), len(users))]
    lanes = [len(part) for part in spread(list(range(in_flight)), len(users))]
    opened = await asyncio.gather(
        *(
            c.call("loop_open", url=urls["relay"].url, lanes=width, timeout_s=SOCKET_TIMEOUT_S)
            for c, width in zip(users, lanes, strict=True)
        )
    )
    async with aiohttp.ClientSession() as session:
        before = await delivery_counts(session, urls["api"])
        cpu0, t0 = meter.read(), time.perf_counter()
        replies = await asyncio.gather(
            *(
                c.call("task_loop", LOOP_TIMEOUT_S, api=urls["api"], key=API_KEY, n=share, timeout_s=TASK_TIMEOUT_S)
                for c, share in zip(users, shares, strict=True)
            )
        )
        seconds = time.perf_counter() - t0
        cpu = meter.diff(cpu0, meter.read())
        await asyncio.gather(*(c.call("close") for c in users))
        completed = sum(r["completed"] for r in replies)
        deliveries = await delivery_changes(session, urls["api"], before, acked=completed)
    return {
        "tasks": n,
        "in_flight": in_flight,
        "sockets": sum(r["opened"] for r in opened),
        "submitted": sum(r["submitted"] for r in replies),
        "completed": completed,
        "acks": sum(r["acks"] for r in replies),
        "finished_before_subscribe": sum(r["finished_before_subscribe"] for r in replies),
        "failures": merge_failures([*opened, *replies]),
        "per_s": round(completed / max(seconds, 1e-9)),
        **summary([x for r in replies for x in r["latencies_ms"]]),
        "deliveries": deliveries,
        "cpu_wall_s": round(seconds, 3),
        "cpu_s": cpu,
        "cpu_us_per_task": cpu_per_task(cpu, completed),
    }


async def delivery_counts(session: aiohttp.ClientSession, api: str) -> dict[str, dict[str, int]]:
    """Relay's deliveries so far by channel and outcome (GET /v1/stats, as the operator)."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.get(api + "/v1/stats", headers=headers) as response:
        return dict((await response.json())["deliveries"])


async def delivery_changes(
    session: aiohttp.ClientSession, api: str, before: dict[str, dict[str, int]], acked: int
) -> dict[str, int]:
    """What changed since ``before``, as {"channel outcome": n}, once ``acked`` WebSocket acks are counted (or
    STATS_WAIT_S passed: each API process answers /v1/stats from its figures of the last second)."""
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        after = await delivery_counts(session, api)
        changes = {
            f"{channel} {outcome}": n - before.get(channel, {}).get(outcome, 0)
            for channel, outcomes in after.items()
            for outcome, n in outcomes.items()
            if n != before.get(channel, {}).get(outcome, 0)
        }
        if changes.get("websocket acked", 0) >= acked or time.monotonic() > deadline:
            return changes
        await asyncio.sleep(STATS_POLL_S)


async def phase_memory(
    stack: Stack, clients: list[ClientProc], target: Target, subs: list[list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    """RSS growth of the server per idle subscribed socket; the clients offer permessage-deflate."""
    concurrency = args.ws_connect_concurrency
    warm = await connect(clients, target, subs[:WARM_SOCKETS], compress=True, concurrency=concurrency)
    await call_all(clients, "close")
    await asyncio.sleep(0.5)
    pid = target.pid(stack)
    before = rss(pid)
    opened = await connect(clients, target, subs, compress=True, concurrency=concurrency)
    await asyncio.sleep(SETTLE_S)
    after = rss(pid)
    held = await collect(clients)
    await call_all(clients, "close")
    sockets = max(1, opened["subscribed"])
    return {
        "sockets": opened["subscribed"],
        "wanted": opened["wanted"],
        "connect_seconds": opened["seconds"],
        "connect_per_s": round(opened["subscribed"] / max(opened["seconds"], 1e-9)),
        "failures": {**opened["failures"], **{f"warm-up {k}": v for k, v in warm["failures"].items()}},
        "open_at_measure": held["open"],
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_socket": round((after - before) / sockets / 1024, 1),
    }


async def phase_latency(
    clients: list[ClientProc], target: Target, publisher: Publisher, meter: CpuMeter, rate: float, seconds: float
) -> dict[str, Any]:
    per_tick = max(1, round(rate * TICK_S))
    ticks = max(1, round(seconds / TICK_S))
    await call_all(clients, "reset")
    cpu0, w0 = meter.read(), time.monotonic()
    start = time.monotonic() + 0.05
    lags = []
    for i in range(ticks):
        due = start + i * TICK_S
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.monotonic() - due)
        await publisher.publish(target, per_tick)
    published = ticks * per_tick
    received = await wait_received(clients, published)
    cpu, cpu_wall = meter.diff(cpu0, meter.read()), time.monotonic() - w0
    got = await collect(clients)
    server = "api" if target.relay else "floor"
    return {
        "published": published,
        "received": got["events"],
        "missing": published - got["events"],
        "rate_per_s": round(published / (ticks * TICK_S)),
        **summary(got["latencies"]),
        "publisher_lag_p99_ms": rounded(percentile(sorted(x * 1000 for x in lags), 99), 2),
        "server_cpu_us_per_event": round(cpu[server] / max(1, received) * 1e6, 1),
        "closes": got["closes"],
        "errors": got["errors"],
        "cpu_s": cpu,
        "cpu_wall_s": round(cpu_wall, 3),
    }


async def phase_fanout(
    clients: list[ClientProc], target: Target, publisher: Publisher, meter: CpuMeter, count: int
) -> dict[str, Any]:
    await call_all(clients, "reset")
    cpu0, w0 = meter.read(), time.monotonic()
    t0 = time.time()
    sent = 0
    while sent < count:
        batch = min(FANOUT_BATCH, count - sent)
        await publisher.publish(target, batch)
        sent += batch
    published_s = time.time() - t0
    await wait_received(clients, count)
    cpu, cpu_wall = meter.diff(cpu0, meter.read()), time.monotonic() - w0
    got = await collect(clients)
    wall = (got["last_at"] or time.time()) - t0
    server = "api" if target.relay else "floor"
    return {
        "published": count,
        "publish_per_s": round(count / max(published_s, 1e-9)),
        "received": got["events"],
        "missing": count - got["events"],
        "per_s": round(got["events"] / max(wall, 1e-9)),
        "server_cpu_us_per_event": round(cpu[server] / max(1, got["events"]) * 1e6, 1),
        "server_cpu_share": round(cpu[server] / max(wall, 1e-9), 2),
        **summary(got["latencies"]),
        "closes": got["closes"],
        "errors": got["errors"],
        "seconds": round(wall, 3),
        "cpu_s": cpu,
        "cpu_wall_s": round(cpu_wall, 3),
    }


async def profiled_fanout(
    stack: Stack,
    clients: list[ClientProc],
    target: Target,
    publisher: Publisher,
    meter: CpuMeter,
    count: int,
    outdir: Path,
    top: int,
) -> dict[str, Any]:
    """One more fan-out round with py-spy (--gil) on the server; its hot spots."""
    name = "ws-" + ("api" if target.relay else "floor")
    proc, out = start_py_spy(target.pid(stack), outdir, name)
    try:
        await asyncio.sleep(0.5)  # py-spy attaches
        result = await phase_fanout(clients, target, publisher, meter, count)
    finally:
        stop_py_spy({name: proc})
    return {
        "while": f"one fan-out round at {result['per_s']:,} events/s while profiled",
        **hot_spots(out, top),
        "file": str(out),
    }


async def profiled_ws_only(
    stack: Stack,
    clients: list[ClientProc],
    urls: dict[str, Any],
    meter: CpuMeter,
    n: int,
    in_flight: int,
    outdir: Path,
    top: int,
) -> dict[str, Any]:
    """One more WebSocket-only loop with py-spy (--gil) on the API and the worker; the hot spots of each."""
    profiler = Profiler(stack, outdir)
    profiler.start()
    try:
        result = await phase_ws_only(clients, urls, meter, n, in_flight)
    finally:
        profiler.stop()
    return {
        f"ws-only {name}": {
            "while": f"one WebSocket-only loop at {result['per_s']:,} tasks/s while profiled",
            **hot_spots(path, top),
            "file": str(path),
        }
        for name, path in profiler.files.items()
    }
