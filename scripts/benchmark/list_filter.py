"""What filtered task lists cost the API's memory: ``python -m scripts.benchmark.list_filter``.

A Redis and one ``relay api`` process of their own (no workers: the tasks stay queued); the store is filled
straight in Redis with ``--tasks`` tasks whose inputs weigh ``--input-kb`` KB each (stored as a submission stores
them), then rounds of concurrent ``GET /v1/tasks?kind=nomatch&limit=500`` (each follows its cursor to the end)
are sent. For each round it prints the API's resident memory before, at its highest during and after the round,
and the bytes Redis sent per list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis.asyncio as aioredis

from delivery.destinations import FlowSettings
from schemas.tasks import TaskRecord, TaskStatus
from scripts.benchmark.stack import API_KEY, Stack, http_ok, log, start_redis, wait_until
from service.processes import free_port
from service.tasks.store import TaskStore

TENANT = "bench"
# The API settles this long after a round before its memory is read again.
SETTLE_S = 2.0


async def fill(redis_url: str, tasks: int, input_kb: int) -> None:
    redis = aioredis.from_url(redis_url)
    store = TaskStore(
        redis=redis,
        record_ttl_s=86400,
        retention_s=86400,
        flow=FlowSettings(max_in_flight=64, breaker_threshold=10, probe_s=5.0, lease_s=35.0, retry_span_s=60.0),
    )
    blob = "x" * (input_kb * 1000)
    try:
        for n in range(tasks):
            record = TaskRecord(
                id=f"task_bench{n:06d}",
                kind="echo",
                status=TaskStatus.QUEUED,
                input={"blob": blob},
                created_at=datetime.now(UTC),
                ws_token="tok",
                tenant=TENANT,
            )
            await store.create(record, idempotency_key=None)
    finally:
        await redis.aclose()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


class PeakRss:
    """The highest resident memory of a process tree, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self._pid))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def list_all(http: httpx.AsyncClient, params: dict[str, str]) -> tuple[int, int, int | None]:
    """Follow one list to its end; the items and pages it took, and the status of the answer that ended it early
    (None when it reached its end)."""
    items = pages = 0
    cursor: str | None = None
    while True:
        response = await http.get("/v1/tasks", params={**params, **({"cursor": cursor} if cursor else {})})
        if response.status_code != 200:
            return items, pages, response.status_code
        answer = response.json()
        items += len(answer["items"])
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            return items, pages, None


async def sent_bytes(redis_url: str) -> int:
    redis = aioredis.from_url(redis_url)
    try:
        return int((await redis.info("stats"))["total_net_output_bytes"])
    finally:
        await redis.aclose()


async def round_of(api_url: str, redis_url: str, pid: int, concurrency: int, kind: str) -> dict[str, Any]:
    params = {"kind": kind, "limit": "500"}
    before = rss_bytes(pid)
    sent_before = await sent_bytes(redis_url)
    started = time.perf_counter()
    timeout = httpx.Timeout(300.0)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout
    ) as http:
        with PeakRss(pid) as peak:
            results = await asyncio.gather(*(list_all(http, params) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    sent = await sent_bytes(redis_url) - sent_before
    await asyncio.sleep(SETTLE_S)
    return {
        "concurrency": concurrency,
        "rss_before_mb": round(before / 1e6, 1),
        "rss_peak_mb": round(peak.peak / 1e6, 1),
        "rss_after_mb": round(rss_bytes(pid) / 1e6, 1),
        "redis_sent_mb_per_list": round(sent / concurrency / 1e6, 2),
        "pages_per_list": results[0][1],
        "items_per_list": results[0][0],
        "failed": sorted(str(status) for _, _, status in results if status is not None),
        "seconds": round(elapsed, 2),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.list_filter", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1500, help="tasks stored")
    parser.add_argument("--input-kb", type=int, default=150, help="KB of each task's input")
    parser.add_argument("--rounds", default="4,12", help="concurrent lists of each round, comma-separated")
    parser.add_argument("--kind", default="nomatch", help="the kind= filter")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-list-"))
    stack = Stack(workdir, dict(os.environ))
    try:
        redis_url = start_redis(stack)
        port = free_port()
        # The API of the tree this script is in (python -m from its root), one process.
        api = stack.start(
            "api", [sys.executable, "-m", "service.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
        )
        api_url = f"http://127.0.0.1:{port}"
        wait_until(api, lambda: http_ok(f"{api_url}/health"), "200 on /health")
        log(f"list_filter: storing {args.tasks:,} tasks of {args.input_kb} KB ...")
        asyncio.run(fill(redis_url, args.tasks, args.input_kb))
        rounds = []
        for concurrency in (int(c) for c in args.rounds.split(",")):
            log(f"list_filter: {concurrency} lists at once ...")
            rounds.append(asyncio.run(round_of(api_url, redis_url, api.popen.pid, concurrency, args.kind)))
    finally:
        stack.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"tasks": args.tasks, "input_kb": args.input_kb, "rounds": rounds}))
        return 0
    print(f"GET /v1/tasks?kind={args.kind}&limit=500 over {args.tasks:,} tasks of {args.input_kb} KB (API RSS, MB)")
    for r in rounds:
        print(
            f"  {r['concurrency']:>3} at once: before {r['rss_before_mb']}, peak {r['rss_peak_mb']}, after "
            f"{r['rss_after_mb']}; Redis sent {r['redis_sent_mb_per_list']} MB per list in {r['pages_per_list']} "
            f"page(s); {r['seconds']} s" + (f"; lists that failed: {', '.join(r['failed'])}" if r["failed"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
