"""What one ``GET /v1/stats`` costs with a big store behind it: ``scripts/bench --stats``.

A Redis and ``relay api`` of their own; the store is filled straight in Redis with dead letters and destinations
(records as Relay writes them, with their indexes), then the endpoint is called back to back, as the admin and as
the tenant, and by many pollers at once (as many open consoles polling every second would). It prints the time per
call and the CPU the API and Redis spent per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis

from delivery import keys, metrics
from delivery.destinations import destination_for
from schemas.dead_letters import DeadLetter, DeadLetterReason
from schemas.events import Event, EventType
from scripts.benchmark.meter import CpuMeter, percentile
from scripts.benchmark.stack import ADMIN_TOKEN, API_KEY, RELAY, Stack, http_ok, log, new_loop, start_redis, wait_until
from service.api.routes.stats import FRESH_FOR_S
from service.processes import free_port

TENANT = "bench"
_encode = msgspec.json.Encoder().encode


async def fill(redis_url: str, dead_letters: int, destinations: int) -> None:
    """``dead_letters`` dead letters and ``destinations`` destinations of the bench tenant, as Relay stores them."""
    redis = aioredis.from_url(redis_url)
    now = time.time()
    reasons = list(DeadLetterReason)
    try:
        for start in range(0, dead_letters, 5000):
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(start, min(start + 5000, dead_letters)):
                    at = datetime.fromtimestamp(now - n, UTC)
                    reason = reasons[n % len(reasons)]
                    event = Event(
                        id=f"evt_b{n}", type=EventType.COMPLETED, task_id=f"task_b{n}", seq=1, created_at=at, data={}
                    )
                    dead = DeadLetter(
                        id=f"dl_b{n}",
                        tenant=TENANT,
                        task_id=event.task_id,
                        event=event,
                        url=f"https://receiver-{n % destinations}.example/hook",
                        reason=reason,
                        attempts=9,
                        last_status_code=500,
                        last_error="HTTP 500",
                        first_attempt_at=at,
                        dead_at=at,
                        replays=0,
                    )
                    score = at.timestamp() * 1000
                    pipe.set(keys.dead_letter(dead.id), _encode(dead), ex=86400)
                    part = keys.of(dead.id)
                    pipe.zadd(part.dead_letters, {dead.id: score})
                    pipe.zadd(part.dead_letters_of(TENANT), {dead.id: score})
                    for counters in (part.stats, part.stats_of(TENANT)):
                        pipe.hincrby(counters, metrics.DEAD_LETTERED, 1)
                        pipe.hincrby(counters, metrics.dead_letter_counter(reason.value), 1)
                await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(destinations):
                dst = destination_for(TENANT, f"https://receiver-{n}.example/hook")
                meta, due, _, deadline = dst.keys
                pipe.hset(meta, mapping={"tenant": TENANT, "origin": dst.origin, "created_at": now, "failures": n % 12})
                if n % 10 == 0:
                    pipe.hset(meta, mapping={"opened_at": now, "next_probe_at": now + 300})
                for k in range(n % 4):  # a few owed webhooks each
                    pipe.zadd(due, {f"evt_d{n}_{k}": now + 60})
                    pipe.zadd(deadline, {f"evt_d{n}_{k}": now + 86400})
                pipe.sadd(keys.of(dst.id).destinations, dst.id)
                pipe.sadd(keys.of(dst.id).destinations_of(TENANT), dst.id)
            await pipe.execute()
    finally:
        await redis.aclose()


async def call_back_to_back(url: str, token: str, calls: int, *, apart_s: float = 0.0) -> list[float]:
    """``calls`` calls one after the other (``apart_s`` between them); the time of each, ms."""
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(calls):
            started = time.perf_counter()
            response = await http.get("/v1/stats")
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(apart_s)
    return times


async def pollers(url: str, token: str, pollers: int, seconds: float) -> int:
    """``pollers`` consoles, each calling once a second for ``seconds``; returns the calls made."""
    made = 0

    async def poll(http: httpx.AsyncClient, offset: float) -> None:
        nonlocal made
        await asyncio.sleep(offset)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            (await http.get("/v1/stats")).raise_for_status()
            made += 1
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=pollers)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits) as http:
        await asyncio.gather(*(poll(http, i / pollers) for i in range(pollers)))
    return made


async def measure(stack: Stack, api_url: str, args: argparse.Namespace) -> dict[str, Any]:
    meter = CpuMeter(stack)
    result: dict[str, Any] = {"dead_letters": args.stats_dead_letters, "destinations": args.stats_destinations}
    await call_back_to_back(api_url, ADMIN_TOKEN, 20)  # warm
    # Computed afresh: calls further apart than an API process keeps its figures.
    apart_s = FRESH_FOR_S + 0.05
    # What the processes spend idle over as long (timers, Redis's cron) is taken off, or it would swamp the figure.
    before = meter.read()
    await asyncio.sleep(args.stats_computed * apart_s)
    idle = CpuMeter.diff(before, meter.read())
    before = meter.read()
    computed = sorted(await call_back_to_back(api_url, ADMIN_TOKEN, args.stats_computed, apart_s=apart_s))
    busy = CpuMeter.diff(before, meter.read())
    spent = {group: max(0.0, busy[group] - idle.get(group, 0.0)) for group in busy}
    result["computed"] = {
        "calls": len(computed),
        "p50_ms": round(percentile(computed, 50) or 0, 2),
        "p99_ms": round(percentile(computed, 99) or 0, 2),
        "api_cpu_us_per_call": round(spent["api"] / len(computed) * 1e6),
        "redis_cpu_us_per_call": round(spent["redis"] / len(computed) * 1e6),
    }
    for who, token in (("admin", ADMIN_TOKEN), ("tenant", API_KEY)):
        before = meter.read()
        times = sorted(await call_back_to_back(api_url, token, args.stats_calls))
        spent = CpuMeter.diff(before, meter.read())
        result[who] = {
            "calls": len(times),
            "p50_ms": round(percentile(times, 50) or 0, 2),
            "p99_ms": round(percentile(times, 99) or 0, 2),
            "api_cpu_us_per_call": round(spent["api"] / len(times) * 1e6),
            "redis_cpu_us_per_call": round(spent["redis"] / len(times) * 1e6),
        }
    before = meter.read()
    made = await pollers(api_url, ADMIN_TOKEN, args.stats_pollers, 10.0)
    spent = CpuMeter.diff(before, meter.read())
    result["pollers"] = {
        "pollers": args.stats_pollers,
        "calls": made,
        "api_share_of_a_core": round(spent["api"] / 10.0, 3),
        "redis_share_of_a_core": round(spent["redis"] / 10.0, 3),
    }
    return result


def run_stats(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-stats-"))
    stack = Stack(workdir, dict(os.environ))
    try:
        log("stats: starting redis and api ...")
        redis_url = start_redis(stack)
        port = free_port()
        api = stack.start("api", [RELAY, "api", "--host", "127.0.0.1", "--port", str(port)])
        api_url = f"http://127.0.0.1:{port}"
        wait_until(api, lambda: http_ok(f"{api_url}/health"), "200 on /health")
        log(f"stats: storing {args.stats_dead_letters:,} dead letters and {args.stats_destinations:,} destinations ...")
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(fill(redis_url, args.stats_dead_letters, args.stats_destinations))
            log(f"stats: {args.stats_calls} calls back to back each as admin and tenant, then pollers ...")
            result = runner.run(measure(stack, api_url, args))
    except KeyboardInterrupt:
        return 130, None
    except (RuntimeError, httpx.HTTPError) as exc:
        log(f"stats bench failed: {exc!r}")
        return 1, None
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0, result


def print_report(result: dict[str, Any]) -> None:
    print(
        f"GET /v1/stats with {result['dead_letters']:,} dead letters and {result['destinations']:,} destinations stored"
    )
    r = result["computed"]
    print(
        f"  computed afresh ({r['calls']} calls over a second apart): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; "
        f"CPU per call: API {r['api_cpu_us_per_call']} µs, Redis {r['redis_cpu_us_per_call']} µs"
    )
    for who in ("admin", "tenant"):
        r = result[who]
        print(
            f"  {who:6} {r['calls']} calls back to back (one computation a second): p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms; "
            f"CPU per call: API {r['api_cpu_us_per_call']} µs, Redis {r['redis_cpu_us_per_call']} µs"
        )
    p = result["pollers"]
    print(
        f"  {p['pollers']} consoles polling once a second for 10 s ({p['calls']} calls): "
        f"API {p['api_share_of_a_core']:.1%} of a core, Redis {p['redis_share_of_a_core']:.1%}"
    )
