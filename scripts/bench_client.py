#!/usr/bin/env python3
"""What a submission costs on the client's side: the same N submissions made with curl (a process per call, and
one process keeping its connection alive through ``--config``), raw httpx (sync and async), ``Relay`` and ``AsyncRelay``, and in
Node (when it is on PATH) a bare ``fetch`` and ``@relay/client``'s ``Relay`` (scripts/bench_client.mjs; each row
counts the start of its Node process).

Against a Relay that is already running: RELAY_URL (default http://127.0.0.1:8000) and RELAY_API_KEY. One
submission at a time, each with its own Idempotency-Key (as the libraries send), so each figure is the time a
caller waits for one submit and the CPU its own process (and its children) spent on it; the server's share is in
every figure alike.

    scripts/bench-client -n 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from relay_client import AsyncRelay, Relay  # noqa: E402

# Submissions per way, unless -n says otherwise.
DEFAULT_N = 200
KIND = "echo"
INPUT = {"bench": True}
BODY = {"kind": KIND, "input": INPUT}


@dataclass
class Figure:
    name: str
    n: int
    wall_s: float
    cpu_s: float  # this process's user+system time, and its children's

    def row(self) -> str:
        per_ms = self.wall_s / self.n * 1000
        cpu_ms = self.cpu_s / self.n * 1000
        return f"{self.name:<34} {self.n:>6} {self.wall_s:>9.2f} {per_ms:>11.2f} {cpu_ms:>12.2f} {self.n / self.wall_s:>9.0f}"


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(name: str, n: int, run: Callable[[], None]) -> Figure:
    cpu0, wall0 = cpu_s(), time.perf_counter()
    run()
    return Figure(name, n, time.perf_counter() - wall0, cpu_s() - cpu0)


def curl_per_call(url: str, key: str, n: int) -> None:
    body = json.dumps(BODY)
    for _ in range(n):
        out = subprocess.run(
            [
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{url}/v1/tasks",
                "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
                "-H", f"Idempotency-Key: bench-{uuid.uuid4().hex}", "--data", body,
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        if out.stdout != "202":
            raise SystemExit(f"curl: HTTP {out.stdout}")


def curl_keep_alive(url: str, key: str, n: int) -> None:
    body = json.dumps(json.dumps(BODY))  # quoted for curl's config syntax
    entries = [
        f'url = "{url}/v1/tasks"\nrequest = "POST"\nheader = "Authorization: Bearer {key}"\n'
        f'header = "Content-Type: application/json"\nheader = "Idempotency-Key: bench-{uuid.uuid4().hex}"\n'
        f'data = {body}\noutput = "/dev/null"\nwrite-out = "%{{http_code}}\\n"\n'
        for _ in range(n)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False) as config:
        config.write("next\n".join(entries))
    try:
        out = subprocess.run(["curl", "-sS", "--config", config.name], capture_output=True, text=True, check=True)
    finally:
        os.unlink(config.name)
    codes = out.stdout.split()
    if codes != ["202"] * n:
        raise SystemExit(f"curl --config: {sorted(set(codes))}")


def raw_httpx(url: str, key: str, n: int) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(n):
            response = client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": f"bench-{uuid.uuid4().hex}"})
            if response.status_code != 202:
                raise SystemExit(f"httpx: HTTP {response.status_code}")


def raw_httpx_async(url: str, key: str, n: int) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(n):
                idempotency = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"}
                response = await client.post("/v1/tasks", json=BODY, headers=idempotency)
                if response.status_code != 202:
                    raise SystemExit(f"httpx async: HTTP {response.status_code}")

    asyncio.run(run())


def sync_client(url: str, key: str, n: int) -> None:
    with Relay(url, key) as relay:
        for _ in range(n):
            relay.tasks.submit(KIND, INPUT)


def async_client(url: str, key: str, n: int) -> None:
    async def run() -> None:
        async with AsyncRelay(url, key) as relay:
            for _ in range(n):
                await relay.tasks.submit(KIND, INPUT)

    asyncio.run(run())


def node(way: str) -> Callable[[str, str, int], None]:
    def run(url: str, key: str, n: int) -> None:
        node = shutil.which("node")
        assert node is not None
        subprocess.run([node, str(ROOT / "scripts" / "bench_client.mjs"), url, key, str(n), way], check=True)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=DEFAULT_N, help=f"submissions per way (default {DEFAULT_N})")
    args = parser.parse_args()
    url = os.environ.get("RELAY_URL", "http://127.0.0.1:8000").rstrip("/")
    key = os.environ.get("RELAY_API_KEY")
    if not key:
        raise SystemExit("set RELAY_API_KEY (and RELAY_URL) to a running Relay's")
    ways: list[tuple[str, Callable[[str, str, int], None]]] = [
        ("curl, a process per submit", curl_per_call),
        ("curl --config, one kept connection", curl_keep_alive),
        ("httpx.Client, raw", raw_httpx),
        ("httpx.AsyncClient, raw", raw_httpx_async),
        ("relay_client.Relay", sync_client),
        ("relay_client.AsyncRelay", async_client),
    ]
    if shutil.which("node") is not None:
        ways += [("Node fetch, raw", node("fetch")), ("@relay/client Relay (Node)", node("client"))]
    else:
        print("node is not on PATH: the JavaScript rows are left out")
    if shutil.which("curl") is None:
        ways = ways[2:]
        print("curl is not on PATH: its rows are left out")
    raw_httpx(url, key, min(args.n, 20))  # warm up the server (and its connection pools) before anything is timed
    print(f"{'way':<34} {'n':>6} {'wall s':>9} {'ms/submit':>11} {'client CPU':>12} {'submit/s':>9}")
    print(f"{'':<34} {'':>6} {'':>9} {'':>11} {'ms/submit':>12} {'':>9}")
    for name, way in ways:
        print(measure(name, args.n, lambda way=way: way(url, key, args.n)).row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
