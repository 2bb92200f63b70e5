"""The webhook bench's phases: the ceiling, throughput, the paced half rate and the bad day."""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import msgspec

from delivery.signing import generate_secret, sign, webhook_headers
from scripts.benchmark.meter import CpuMeter, cpu_per_task, percentile, rounded
from scripts.benchmark.profiling import Profiler
from scripts.benchmark.webhooks.client import Client, calls_since, redis_calls, storage_nodes

# In flight during the ceiling phase (the figure FIELD.md quotes is at 64).
CEILING_IN_FLIGHT = 64
# Connections the paced (open-loop) phase may open; it never waits on a free one below this.
PACED_MAX_CONNECTIONS = 512
# How long the bad day waits for its bad tasks to run before it measures.
BAD_DAY_SETTLE_S = 600.0
SETTLE_POLL_S = 0.25
USER_AGENT = "relay-bench"


async def run_closed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Call ``one(i)`` for i in range(n), ``concurrency`` at a time."""
    indexes: Iterator[int] = iter(range(n))

    async def lane() -> None:
        for i in indexes:  # one iterator shared by every lane
            await one(i)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))


def latency_summary(sent: dict[str, float], arrivals: dict[str, float]) -> dict[str, Any]:
    latencies = sorted((arrivals[t] - s) * 1000 for t, s in sent.items() if t in arrivals)
    return {
        "delivered": len(latencies),
        "missing": len(sent) - len(latencies),
        "p50_ms": rounded(percentile(latencies, 50)),
        "p99_ms": rounded(percentile(latencies, 99)),
        "max_ms": rounded(latencies[-1] if latencies else None),
    }


async def phase_ceiling(client: Client, meter: CpuMeter, n: int) -> dict[str, Any]:
    secret = generate_secret()
    connector = aiohttp.TCPConnector(limit=CEILING_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses: collections.Counter[int] = collections.Counter()

        async def one(i: int) -> None:
            msg_id = f"evt_bench{i:08d}"
            body = msgspec.json.encode(
                {
                    "id": msg_id,
                    "type": "task.completed",
                    "task_id": f"ceil_{i}",
                    "seq": 1,
                    "created_at": "2025-01-01T00:00:00Z",
                    "data": {"status": "succeeded", "result": {"i": i}},
                }
            )
            headers = webhook_headers([secret], msg_id, int(time.time()), body, user_agent=USER_AGENT)
            async with session.post(client.urls["hook"], data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1

        await run_closed(min(n, 500), CEILING_IN_FLIGHT, one)  # warm up: open the connections
        await client.drain(session)
        statuses.clear()
        cpu0, t0 = meter.read(), time.perf_counter()
        await run_closed(n, CEILING_IN_FLIGHT, one)
        elapsed = time.perf_counter() - t0
        cpu = meter.diff(cpu0, meter.read())
        drained = await client.drain(session)
    return {
        "requests": n,
        "ok": statuses[200],
        "received": len(drained.arrivals),
        "seconds": round(elapsed, 3),
        "req_per_s": round(n / elapsed),
        "cpu_s": cpu,
    }


async def phase_throughput(
    client: Client, meter: CpuMeter, n: int, concurrency: int, drain_timeout_s: float, profile: Profiler | None
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    tenant_of: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        bodies = [client.submission(i) for i in range(n)]

        async def one(i: int) -> None:
            started = time.time()
            task_id = await client.submit(session, bodies[i], tenant=i)  # the client's tenants in turn
            if task_id is not None:
                sent[task_id] = started
                tenant_of[task_id] = i

        client.errors.clear()
        if profile is not None:
            profile.start()
        # Each of the storage's nodes and the broker's Redis, if it has one: blocks the loop a moment, with nothing
        # in flight.
        nodes = storage_nodes(client.urls)
        broker = client.urls.get("broker")
        calls0 = {address: redis_calls(url) for address, url in nodes.items()}
        broker0 = redis_calls(broker) if broker else None
        cpu0 = meter.read()
        first = time.time()
        await run_closed(n, concurrency, one)
        submitted = time.time()
        await client.wait_for(session, len(sent), drain_timeout_s)
        ended = time.time()
        cpu = meter.diff(cpu0, meter.read())
        by_node = {address: calls_since(url, calls0[address]) for address, url in nodes.items()}
        broker_calls = calls_since(broker, broker0) if broker and broker0 is not None else None
        if profile is not None:
            profile.stop()
        drained = await client.drain(session)
        signature = await check_signature(client, session, drained.sample, tenant_of)
        unexplained = await client.explain(session, [t for t in sent if t not in drained.arrivals][:3])
    arrived = [drained.arrivals[t] for t in sent if t in drained.arrivals]
    last = max(arrived) if arrived else ended
    calls = sum(by_node.values(), collections.Counter[str]())
    figures = {
        "tasks": n,
        "accepted": len(sent),
        "submit_errors": dict(client.errors),
        "submit_per_s": round(len(sent) / (submitted - first)),
        "end_to_end_per_s": round(len(arrived) / (last - first)) if arrived else 0,
        "seconds": round(last - first, 3),
        **latency_summary(sent, drained.arrivals),
        "duplicates": drained.dupes,
        "not_succeeded": drained.not_succeeded,
        "signature": signature,
        "missing_sample": unexplained,
        "cpu_s": cpu,
        "cpu_us_per_task": cpu_per_task(cpu, len(arrived)),
        "redis_calls_per_task": per_task(calls, len(arrived)),
        "redis_calls_by_node": {address: calls.total() for address, calls in by_node.items()},
    }
    if broker_calls is not None:
        figures["broker_calls_per_task"] = per_task(broker_calls, len(arrived))
    return figures


def per_task(calls: collections.Counter[str], tasks: int) -> dict[str, float]:
    """Calls of each command per task, the most called first."""
    return {k: round(v / max(1, tasks), 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}


async def phase_paced(
    client: Client, meter: CpuMeter, rate: float, duration_s: float, drain_timeout_s: float
) -> dict[str, Any]:
    """Open loop: submission i is due at start + i / rate, whatever the ones before it are doing."""
    count = max(1, int(rate * duration_s))
    sent: dict[str, float] = {}
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=PACED_MAX_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        bodies = [client.submission(i) for i in range(count)]

        async def one(i: int, due: float) -> None:
            lags.append(time.time() - due)
            task_id = await client.submit(session, bodies[i])
            if task_id is not None:
                sent[task_id] = due  # latency from when it was due: no coordinated omission

        client.errors.clear()
        cpu0 = meter.read()
        start = time.time() + 0.05
        in_flight: set[asyncio.Task[None]] = set()
        for i in range(count):
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
        await client.wait_for(session, len(sent), drain_timeout_s)
        ended = time.time()
        cpu = meter.diff(cpu0, meter.read())
        drained = await client.drain(session)
    lags.sort()
    return {
        "rate_per_s": round(rate),
        "tasks": count,
        "accepted": len(sent),
        "submit_errors": dict(client.errors),
        "seconds": round(ended - start, 3),
        "submit_lag_p99_ms": rounded(percentile([x * 1000 for x in lags], 99)),
        **latency_summary(sent, drained.arrivals),
        "cpu_s": cpu,
    }


async def phase_bad_day(client: Client, meter: CpuMeter, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """The quiet day's two phases again, while one destination hangs and another drops every connection, with
    thousands of webhooks owed to each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:
        bad_accepted = 0

        async def owe(i: int) -> None:
            nonlocal bad_accepted
            url = client.urls["hang"] if i % 2 == 0 else client.urls["dead"]
            if await client.submit(session, client.submission(i, url)) is not None:
                bad_accepted += 1

        await run_closed(2 * args.bad_owed, args.concurrency, owe)

        async def all_owed() -> bool:
            bad = [d for d in await client.destinations(session) if d["origin"] != client.urls["receiver"]]
            return sum(int(d["owed"]) for d in bad) >= bad_accepted

        for _ in range(int(BAD_DAY_SETTLE_S / SETTLE_POLL_S)):  # until every bad task has run and owes its webhook
            if await all_owed():
                break
            await asyncio.sleep(SETTLE_POLL_S)
        before = await client.bad_counts(session)
        started = time.time()
    thr = await phase_throughput(client, meter, args.tasks, args.concurrency, args.timeout, None)
    paced = await phase_paced(client, meter, rate, args.paced_s, args.timeout)
    async with aiohttp.ClientSession() as session:
        after = await client.bad_counts(session)
        states = {d["origin"]: d for d in await client.destinations(session)}
    seconds = time.time() - started
    return {
        "bad_owed": bad_accepted,
        "throughput": thr,
        "paced": paced,
        "seconds": round(seconds, 1),
        "dead_connections": after["dead_connections"] - before["dead_connections"],
        "hang_requests": after["hang_requests"] - before["hang_requests"],
        "states": {
            name: {
                k: states.get(client.urls[name].removesuffix("/hook"), {}).get(k)
                for k in ("state", "owed", "in_flight")
            }
            for name in ("hang", "dead")
        },
    }


async def warm_up(client: Client, n: int, drain_timeout_s: float) -> None:
    """Open connections, load code paths and make each tenant's signing secret and destination before measuring
    (two tasks of each tenant at least)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        accepted = 0

        async def one(i: int) -> None:
            nonlocal accepted
            if await client.submit(session, client.submission(i), tenant=i) is not None:
                accepted += 1

        await run_closed(max(n, 2 * client.tenants), 16, one)
        await client.wait_for(session, accepted, drain_timeout_s)
        await client.drain(session)
        if client.errors:
            raise RuntimeError(f"warm-up submissions failed: {dict(client.errors)}")


async def check_signature(
    client: Client, session: aiohttp.ClientSession, sample: dict[str, Any] | None, tenant_of: dict[str, int]
) -> str:
    """Verify one received webhook against its task's tenant's secret, as a receiver would."""
    if sample is None:
        return "no webhook"
    headers, body = sample["headers"], sample["body"].encode()
    try:
        tenant = tenant_of[msgspec.json.decode(body)["task_id"]]
        secret = await client.signing_secret(session, tenant)
        expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    except (KeyError, ValueError, TypeError) as exc:
        return f"bad headers or body ({exc!r})"
    return "ok" if expected in headers.get("webhook-signature", "").split() else "MISMATCH"
