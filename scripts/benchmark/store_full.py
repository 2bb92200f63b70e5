"""A full store, measured: Redis with maxmemory a few MB above a fresh store (noeviction), 4 KB tasks submitted as
fast as possible for a while, then maxmemory lifted; how many were accepted, refused, completed and lost, and
used_memory at its highest against maxmemory.

    .venv/bin/python -m scripts.benchmark.store_full [--room-mb 3] [--seconds 30] [--concurrency 16] [--json]

It starts its own Redis, ``relay api`` and ``relay worker`` (stopped at the end). Lost: accepted and never ended
within ``--drain-s`` of maxmemory being lifted. Twice: tasks with more than one final event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from scripts.benchmark.stack import API_KEY, RELAY, Stack, http_ok, log, start_redis, wait_until
from service.processes import free_port

FINAL = (b'"type":"task.completed"', b'"type":"task.failed"', b'"type":"task.cancelled"')


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts.benchmark.store_full", description=__doc__.split("\n\n")[0])
    parser.add_argument("--room-mb", type=float, default=3.0, help="maxmemory above a fresh store's used_memory")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to submit")
    parser.add_argument("--concurrency", type=int, default=16, help="submissions in flight")
    parser.add_argument("--input-bytes", type=int, default=4096, help="size of each task's input")
    parser.add_argument("--full-wait-s", type=float, default=10.0, help="wait while still full, before lifting")
    parser.add_argument("--drain-s", type=float, default=120.0, help="wait for accepted tasks after lifting")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


async def submit_for(api: str, args: argparse.Namespace, tally: dict[str, Any], until: float) -> None:
    pad = "x" * args.input_bytes
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30, limits=limits) as client:

        async def one(worker: int) -> None:
            n = 0
            while time.monotonic() < until:
                key = f"{worker}-{n}"
                n += 1
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/v1/tasks", json={"kind": "echo", "input": {"pad": pad}}, headers={"Idempotency-Key": key}
                    )
                except httpx.HTTPError as exc:
                    tally["errors"][type(exc).__name__] = tally["errors"].get(type(exc).__name__, 0) + 1
                    continue
                tally["latency_ms"].setdefault(str(response.status_code), []).append(1000 * (time.monotonic() - sent))
                if response.status_code == 202:
                    tally["accepted"].append(response.json()["id"])
                elif response.status_code == 503:
                    tally["refused"] += 1
                    if not tally["refusal"]:
                        tally["refusal"] = response.json().get("detail", "")
                    await asyncio.sleep(0.05)
                else:
                    code = str(response.status_code)
                    tally["other"][code] = tally["other"].get(code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(args.concurrency)))


def ended(admin: redis.Redis, task_ids: list[str]) -> tuple[int, int]:
    """How many of ``task_ids`` have a final event, and how many more than one."""
    done = twice = 0
    for start in range(0, len(task_ids), 500):
        pipe = admin.pipeline(transaction=False)
        for task_id in task_ids[start : start + 500]:
            pipe.lrange(f"relay:events:{task_id}", 0, -1)
        for events in pipe.execute():
            finals = sum(1 for e in events if any(mark in e for mark in FINAL))
            done += finals >= 1
            twice += finals > 1
    return done, twice


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="relay-store-full-"))
    stack = Stack(workdir, env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")})
    try:
        redis_url = start_redis(stack)
        admin = redis.Redis.from_url(redis_url)
        port = free_port()
        api_url = f"http://127.0.0.1:{port}"
        api = stack.start("api", [RELAY, "api", "--host", "127.0.0.1", "--port", str(port)])
        worker = stack.start("worker", [RELAY, "worker"])
        wait_until(api, lambda: http_ok(f"{api_url}/ready"), "200 on /ready")
        wait_until(worker, lambda: "ready for action" in worker.log_path.read_text(errors="replace"), "ready")
        fresh = int(admin.info("memory")["used_memory"])
        limit = fresh + int(args.room_mb * 1_000_000)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", limit)
        log(f"fresh store {fresh} B; maxmemory {limit} B; submitting for {args.seconds:g} s")

        tally: dict[str, Any] = {
            "accepted": [],
            "refused": 0,
            "refusal": "",
            "other": {},
            "errors": {},
            "latency_ms": {},
        }
        peak = [fresh]

        async def measure() -> None:
            until = time.monotonic() + args.seconds
            submitting = asyncio.ensure_future(submit_for(api_url, args, tally, until))
            while not submitting.done():
                peak[0] = max(peak[0], int(admin.info("memory")["used_memory"]))
                await asyncio.sleep(0.1)
            await submitting
            full_until = time.monotonic() + args.full_wait_s
            while time.monotonic() < full_until:
                peak[0] = max(peak[0], int(admin.info("memory")["used_memory"]))
                await asyncio.sleep(0.1)

        asyncio.run(measure())
        ready = httpx.get(f"{api_url}/ready", timeout=10)
        accepted: list[str] = tally["accepted"]
        done_while_full, _ = ended(admin, accepted)
        log(f"accepted {len(accepted)}, refused {tally['refused']}; ended while full {done_while_full}; lifting")
        admin.config_set("maxmemory", 0)
        deadline = time.monotonic() + args.drain_s
        done, twice = ended(admin, accepted)
        while done < len(accepted) and time.monotonic() < deadline:
            time.sleep(2)
            done, twice = ended(admin, accepted)
        return {
            "maxmemory_bytes": limit,
            "fresh_used_bytes": fresh,
            "peak_used_bytes": peak[0],
            "peak_over_maxmemory_pct": round(100 * (peak[0] - limit) / limit, 2),
            "submitted_for_s": args.seconds,
            "accepted": len(accepted),
            "refused": tally["refused"],
            "other_answers": tally["other"],
            "client_errors": tally["errors"],
            "refusal_detail": tally["refusal"],
            "latency_ms_p50_p99": {
                status: [round(statistics.quantiles(v, n=100)[q], 1) for q in (49, 98)] if len(v) > 1 else v
                for status, v in tally["latency_ms"].items()
            },
            "ready_while_full": f"{ready.status_code} {ready.text[:300]}",
            "ended_while_full": done_while_full,
            "completed": done,
            "lost": len(accepted) - done,
            "ended_twice": twice,
            "drain_s": args.drain_s,
        }
    finally:
        stack.stop_all()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    figures = run(args)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
