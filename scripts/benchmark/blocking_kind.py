"""What one tenant's blocking kind costs the others: another tenant's ``echo`` latency, and how often it runs.

    .venv/bin/python -m scripts.benchmark.blocking_kind --processes 1 --block-s 20

Starts Redis, ``relay api`` and ``relay worker --processes N`` (with the test kinds), submits one ``block`` task
(an ``async def`` kind that calls ``time.sleep``) for one tenant, and while it runs submits an ``echo`` for
another tenant every ``--every-s``, each followed to its end. Stops once the blocking task has ended and the
last echo with it (or after ``--cap-s``), and prints one JSON line: the echoes' latencies (p50, max), how many
times the blocking task ran, how it ended, and after how long.

Measured on a shared 2-core box with a 20 s block, an echo a second (before: kinds on the worker's own loop;
after: on kind loops of their own):

    processes                      other tenant's echo p50 / max   blocking task ran, ended after
    1           before             10.65 s / 20.32 s              1 time, 20.4 s
                after              0.016 s / 0.564 s              1 time, 20.0 s
    2           before             4.80 s / 19.11 s               4 times, 65.8 s
                after              0.035 s / 0.110 s              1 time, 20.1 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from scripts.benchmark.stack import RELAY, Stack, http_ok, log, start_redis, wait_until
from service.processes import free_port

BLOCKER_KEY = "key-blocker"
OTHER_KEY = "key-other"


def _follow(client: httpx.Client, key: str, body: dict[str, Any], cap_s: float) -> tuple[float, dict[str, Any]]:
    """Submit and poll until the task ends; seconds it took and the task."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    task = client.post("/v1/tasks", json=body, headers=headers).raise_for_status().json()
    while time.monotonic() - started < cap_s:
        task = client.get(f"/v1/tasks/{task['id']}", headers=headers).raise_for_status().json()
        if task["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.02)
    return time.monotonic() - started, task


def measure(*, processes: int, block_s: float, every_s: float, cap_s: float, workdir: Path) -> dict[str, Any]:
    stack = Stack(workdir, env={})
    stack.env.update({k: v for k, v in os.environ.items() if not k.startswith("RELAY_")})
    try:
        start_redis(stack)
        stack.env.update(
            RELAY_API_KEYS=f"blocker={BLOCKER_KEY},other={OTHER_KEY}",
            RELAY_TASK_MODULES="tests.kinds_for_tests",
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = stack.start("api", [RELAY, "api", "--port", str(port)])
        worker = stack.start("worker", [RELAY, "worker", "--processes", str(processes), "--threads", "8"])
        wait_until(api, lambda: http_ok(url + "/health"), "health")
        wait_until(
            worker,
            lambda: worker.log_path.read_text(errors="replace").count("ready for action") >= processes,
            "workers ready",
        )
        runs_file = workdir / "runs"
        latencies: list[float] = []
        lock = threading.Lock()
        with httpx.Client(base_url=url, timeout=cap_s) as client:
            blocked: dict[str, Any] = {}

            def run_blocker() -> None:
                body = {"kind": "block", "input": {"seconds": block_s, "runs_file": str(runs_file)}}
                blocked["took_s"], blocked["task"] = _follow(client, BLOCKER_KEY, body, cap_s)

            blocker = threading.Thread(target=run_blocker)
            blocker.start()
            while not runs_file.exists():
                time.sleep(0.01)
            echoes: list[threading.Thread] = []

            def echo() -> None:
                took, task = _follow(client, OTHER_KEY, {"kind": "echo", "input": "hi"}, cap_s)
                if task["status"] == "succeeded":
                    with lock:
                        latencies.append(took)

            while blocker.is_alive():
                thread = threading.Thread(target=echo)
                thread.start()
                echoes.append(thread)
                blocker.join(every_s)
            for thread in echoes:
                thread.join()
        task = blocked["task"]
        return {
            "processes": processes,
            "block_s": block_s,
            "echoes": len(echoes),
            "echoes_succeeded": len(latencies),
            "echo_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "echo_max_s": round(max(latencies), 3) if latencies else None,
            "block_runs": len(runs_file.read_text().splitlines()),
            "block_status": task["status"],
            "block_ended_after_s": round(blocked["took_s"], 1),
        }
    finally:
        stack.stop_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.blocking_kind", description=__doc__)
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--block-s", type=float, default=20.0, help="how long the kind blocks its loop")
    parser.add_argument("--every-s", type=float, default=1.0, help="an echo this often while it blocks")
    parser.add_argument("--cap-s", type=float, default=240.0, help="give up after this long")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-blocking-") as workdir:
        log(f"blocking kind: {args.block_s:g} s, {args.processes} worker processes")
        figures = measure(
            processes=args.processes,
            block_s=args.block_s,
            every_s=args.every_s,
            cap_s=args.cap_s,
            workdir=Path(workdir),
        )
    print(json.dumps(figures), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
