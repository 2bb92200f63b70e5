"""The WebSocket figures of ``scripts/bench`` (``--ws``; ``--all``, the default, runs them after the webhooks).

Starts its own Redis, ``relay api`` (one process), ``relay worker``, the raw floor (``scripts/ws_floor.py``: bare
Litestar, one WebSocket route, one Redis pattern subscription, run under uvicorn as ``relay api`` runs) and a few
client processes (``scripts/ws_client.py``, aiohttp), then measures, Relay beside the floor in the same run:

  end to end  echo tasks through a real worker: submit -> task.completed on a socket opened beforehand
  memory      RSS growth of the server process per idle subscribed socket, the clients OFFERING
              permessage-deflate as browsers do: Relay (declines it), the floor declining, the floor accepting
  latency     events published on each task's channel at a steady rate across N subscribed sockets;
              receive time minus the event's created_at (set when published), p50/p99; server CPU per event
  fan-out     events published as fast as possible (bounded) to the same sockets; frames received per second
              across every client, server CPU per event

Relay's events are real Event JSON published on ``relay:live:{task_id}`` (as a worker's append does), of type
``task.progress`` with rising ``seq``, for real tasks made through the API; the worker is stopped after the end to
end phase so that those tasks stay queued and nothing else publishes. The floor gets the same frames on its own
channels. Relay's clients answer pings and ack every event, as the protocol asks; the floor's do not ack.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import bench
import msgspec
import psutil
from bench import API_KEY, VENV, Service, Stack, free_port, http_ok, log, percentile, wait_until

from schemas.events import Event, EventType

SCRIPTS = Path(__file__).resolve().parent
GROUPS = ("api", "floor", "worker", "redis", "clients", "bench", "other")

# Targets printed beside the figures.
TARGET_P99_MS = 20.0
TARGET_FANOUT_SHARE = 0.5
TARGET_KB_PER_SOCKET = 30.0

RELAY_PREFIX = "relay:live:"
FLOOR_PREFIX = "floor:live:"
FLOOR_DEFLATE_PREFIX = "floorz:live:"

# How long one control command to a client process may take (connecting 2,500 sockets included).
CONTROL_TIMEOUT_S = 120.0
# Per socket: connect, and wait for the subscribed frame.
SOCKET_TIMEOUT_S = 15.0
# Tasks made at once through the API, and how long making them may take before sockets share tasks.
CREATE_IN_FLIGHT = 32
CREATE_BUDGET_S = 40.0
# Latency phase: one pipeline of events every TICK_S.
TICK_S = 0.01
# Fan-out phase: events per pipeline.
FANOUT_BATCH = 200
# After the last publish: wait until every event arrived, or nothing arrived for STALL_S, or DRAIN_S passed.
STALL_S = 3.0
DRAIN_S = 30.0
POLL_S = 0.1
# Echo tasks each client runs through the worker before the end-to-end figure is taken.
E2E_WARM_TASKS = 10
# Other processes' CPU (share of one core) above which a phase's figures are flagged as disturbed.
OTHER_LOAD_WARN = 0.25
# Sockets opened and closed on each server before its memory baseline (imports, pools, first allocations).
WARM_SOCKETS = 200
# Wait after the last socket subscribed before reading RSS.
SETTLE_S = 2.0


# ---------------------------------------------------------------------------------------------- processes


class ClientProc:
    """One ``scripts/ws_client.py`` process, driven over its unix socket."""

    def __init__(self, service: Service, path: Path) -> None:
        self.service = service
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=256 * 1024 * 1024)

    async def call(self, op: str, wait_s: float = CONTROL_TIMEOUT_S, **kwargs: Any) -> dict[str, Any]:
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
        await self._writer.drain()
        try:
            line = await asyncio.wait_for(self._reader.readline(), wait_s)
        except TimeoutError:
            raise RuntimeError(f"{self.service.name}: no answer to {op} in {wait_s:g} s") from None
        if not line:
            raise RuntimeError(f"{self.service.name} went away during {op}:\n{self.service.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.service.name}: {op} failed: {reply['error']}")
        return reply


async def call_all(clients: list[ClientProc], op: str, timeout_s: float = CONTROL_TIMEOUT_S) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(c.call(op, timeout_s) for c in clients)))


@dataclass
class Target:
    """A server the sockets connect to."""

    name: str
    service: str  # its name in the stack
    url: str  # ws://...
    prefix: str  # channel prefix its events are published under
    relay: bool

    def pid(self, stack: Stack) -> int:
        return stack.services[self.service].popen.pid


def start_floor(stack: Stack, name: str, redis_url: str, prefix: str, deflate: bool) -> Target:
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "ws_floor.py"), "--port", str(port), "--redis", redis_url, "--prefix", prefix]
    service = stack.start(name, [*argv, "--deflate"] if deflate else argv)
    wait_until(
        service, lambda: "Application startup complete" in service.log_path.read_text(errors="replace"), "startup"
    )
    label = "floor, deflate accepted" if deflate else "floor"
    return Target(label, name, f"ws://127.0.0.1:{port}/ws", prefix, relay=False)


def start_stack(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    redis_url = bench.start_redis(stack)
    api_port = free_port()
    relay = str(VENV / "bin" / "relay")
    api = stack.start("api", [relay, "api", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"])
    worker = stack.start(
        "worker", [relay, "worker", "--processes", str(args.worker_processes), "--threads", str(args.threads)]
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
        service = stack.start(f"client{i}", [sys.executable, str(SCRIPTS / "ws_client.py"), str(path)])
        procs.append(ClientProc(service, path))
    for proc in procs:
        wait_until(proc.service, lambda p=proc: "ready" in p.service.log_path.read_text(errors="replace"), "ready")
    return procs


# ---------------------------------------------------------------------------------------------- measuring


class CpuMeter(bench.CpuMeter):
    """The webhook bench's meter, with the WebSocket run's columns."""

    groups = GROUPS
    self_group = "bench"

    @staticmethod
    def group(service: str) -> str:
        if service.startswith("floor"):
            return "floor"
        if service.startswith("client"):
            return "clients"
        return service


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def spread(items: list[Any], n: int) -> list[list[Any]]:
    """items split round-robin into n lists."""
    return [items[i::n] for i in range(n)]


def merge_failures(replies: list[dict[str, Any]], key: str = "failures") -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for reply in replies:
        total.update(reply.get(key, {}))
    return dict(total)


def summary(latencies: list[float]) -> dict[str, float | None]:
    latencies = sorted(latencies)
    return {
        "p50_ms": _r(percentile(latencies, 50), 2),
        "p99_ms": _r(percentile(latencies, 99), 2),
        "max_ms": _r(latencies[-1] if latencies else None, 2),
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class Publisher:
    """Publishes real Event JSON on each task's channel, with a rising seq per task (Relay drops old seqs)."""

    def __init__(self, redis_url: str, task_ids: list[str]) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        self.task_ids = task_ids
        self.seq = dict.fromkeys(task_ids, 0)
        self.n = 0

    def event(self, task_id: str) -> bytes:
        self.seq[task_id] += 1
        self.n += 1
        seq = self.seq[task_id]
        return msgspec.json.encode(
            Event(
                id=f"evt_bench{self.n:026d}",
                type=EventType.PROGRESS,
                task_id=task_id,
                seq=seq,
                created_at=datetime.now(UTC),
                data={"percent": float(seq % 100), "message": f"bench event {seq}"},
            )
        )

    async def publish(self, target: Target, count: int) -> None:
        """``count`` events, round-robin over the tasks, in one pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for _ in range(count):
                task_id = self.task_ids[self.n % len(self.task_ids)]
                body = self.event(task_id)
                if not target.relay:  # the floor sends what it gets: give it the frame Relay would send
                    body = b'{"type":"event","event":' + body + b"}"
                pipe.publish(target.prefix + task_id, body)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


async def wait_received(clients: list[ClientProc], expected: int) -> int:
    """Until the clients hold ``expected`` events, or none arrived for STALL_S, or DRAIN_S passed."""
    deadline = time.monotonic() + DRAIN_S
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = sum(r["events"] for r in await asyncio.gather(*(c.call("count", 10) for c in clients)))
        if got >= expected:
            return got
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return got
        await asyncio.sleep(POLL_S)
    return last


async def collect(clients: list[ClientProc]) -> dict[str, Any]:
    replies = await call_all(clients, "stats")
    latencies = [x for r in replies for x in r["latencies_ms"]]
    return {
        "events": sum(r["events"] for r in replies),
        "latencies": latencies,
        "first_at": min((r["first_at"] for r in replies if r["first_at"]), default=None),
        "last_at": max((r["last_at"] for r in replies if r["last_at"]), default=None),
        "closes": merge_failures(replies, "closes"),
        "errors": merge_failures(replies, "errors"),
        "open": sum(r["open"] for r in replies),
    }


# ---------------------------------------------------------------------------------------------- phases


async def make_tasks(api: str, n: int) -> tuple[list[list[str]], float, dict[str, int]]:
    """n websocket echo tasks through the API (the worker is stopped: they stay queued); [[id, ws_token]]."""
    made: list[list[str]] = []
    errors: collections.Counter[str] = collections.Counter()
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    started = time.perf_counter()
    deadline = time.monotonic() + CREATE_BUDGET_S
    counter = iter(range(n))

    async def lane(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            body = msgspec.json.encode({"kind": "echo", "input": {"i": i}, "websocket": True})
            try:
                async with session.post(api + "/v1/tasks", data=body, headers=headers) as response:
                    raw = await response.read()
                    if response.status != 202:
                        errors[f"HTTP {response.status}"] += 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            task = json.loads(raw)
            made.append([task["id"], task["ws_token"]])

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CREATE_IN_FLIGHT), timeout=timeout) as s:
        await asyncio.gather(*(lane(s) for _ in range(CREATE_IN_FLIGHT)))
    return made, time.perf_counter() - started, dict(errors)


async def connect(
    clients: list[ClientProc], target: Target, subs: list[list[str]], *, compress: bool, concurrency: int
) -> dict[str, Any]:
    parts = spread(subs, len(clients))
    replies = await asyncio.gather(
        *(
            c.call(
                "connect",
                url=target.url,
                subs=part,
                relay=target.relay,
                compress=compress,
                concurrency=concurrency,
                timeout_s=SOCKET_TIMEOUT_S,
            )
            for c, part in zip(clients, parts, strict=True)
        )
    )
    return {
        "subscribed": sum(r["subscribed"] for r in replies),
        "wanted": len(subs),
        "seconds": max(r["seconds"] for r in replies),
        "failures": merge_failures(list(replies)),
    }


async def phase_e2e(clients: list[ClientProc], urls: dict[str, Any], meter: CpuMeter, n: int, rate: float) -> dict:
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
        "publisher_lag_p99_ms": _r(percentile(sorted(x * 1000 for x in lags), 99), 2),
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


def start_py_spy(pid: int, outdir: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    py_spy = shutil.which("py-spy") or str(VENV / "bin" / "py-spy")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}.txt"
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil", "--nonblocking"]
    with (outdir / f"{name}.err").open("wb") as err:
        proc = subprocess.Popen(
            [*argv, "-o", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
    return proc, out


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=bench.STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    proc, out = start_py_spy(target.pid(stack), outdir, "ws-" + ("api" if target.relay else "floor"))
    try:
        await asyncio.sleep(0.5)  # py-spy attaches
        result = await phase_fanout(clients, target, publisher, meter, count)
    finally:
        stop_py_spy(proc)
    spots = bench.hot_spots(out, top) if out.exists() else {"samples": 0, "own": [], "packages": [], "ours": []}
    return {"fanout_per_s_while_profiled": result["per_s"], **spots, "file": str(out)}


def log_findings(path: Path, limit: int = 8) -> dict[str, Any]:
    """Warnings, errors and tracebacks in a server's log."""
    counts: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"counts": {}, "samples": []}
    for line in lines:
        for level in ("ERROR", "WARNING", "CRITICAL", "Traceback"):
            if level in line:
                counts[level] += 1
                text = line.split(": ", 1)[-1] if level != "Traceback" else line
                if len(samples) < limit and text not in samples:
                    samples.append(text[:240])
                break
    return {"counts": dict(counts), "samples": samples}


# ---------------------------------------------------------------------------------------------- run


async def run(stack: Stack, urls: dict[str, Any], clients: list[ClientProc], args: argparse.Namespace) -> dict:
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
            "clients": len(clients),
            "cpus": os.cpu_count(),
        }
    }

    log(f"ws end to end: {args.ws_e2e_tasks} echo tasks at {args.ws_e2e_rate:g}/s through a worker ...")
    e2e = await phase_e2e(clients, urls, meter, args.ws_e2e_tasks, args.ws_e2e_rate)
    result["e2e"] = e2e
    log(f"  p50 {e2e['p50_ms']} ms, p99 {e2e['p99_ms']} ms, completed {e2e['completed']}/{e2e['submitted']}")
    stack.services["worker"].stop()  # from here on the tasks stay queued: only the bench publishes events

    wanted = max(args.ws_idle_sockets, args.ws_sockets)
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
    result["latency"], result["fanout"], result["connect"], result["profile"] = {}, {}, {}, {}
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
        with asyncio.Runner(loop_factory=bench.new_loop) as runner:
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
        + result["fanout"]["Relay"]["missing"]
        + (result["e2e"]["submitted"] - result["e2e"]["completed"])
    )
    return (1 if relay_lost else 0), result


# ---------------------------------------------------------------------------------------------- report


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    cfg = result["config"]
    console.print(
        f"\n[bold]Relay WebSocket bench[/]  {cfg['sockets']:,} sockets, {cfg['clients']} client processes, "
        f"1 API process, {cfg['cpus']} cpus (server, Redis and clients share them)"
    )
    lat, fan, mem, e2e = result["latency"], result["fanout"], result["memory"], result["e2e"]
    r_lat, f_lat = lat["Relay"], lat["floor"]
    r_fan, f_fan = fan["Relay"], fan["floor"]

    def ok(flag: bool) -> str:
        return "[green]met[/]" if flag else "[red]MISSED[/]"

    table = Table(title="Relay beside the raw floor (same run)", title_justify="left")
    for col, justify in (("figure", "left"), ("Relay", "right"), ("floor", "right"), ("target", "left"), ("", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_row(
        f"push latency p50 / p99, {cfg['sockets']:,} sockets, {r_lat['rate_per_s']:,} events/s",
        f"{r_lat['p50_ms']} / {r_lat['p99_ms']} ms",
        f"{f_lat['p50_ms']} / {f_lat['p99_ms']} ms",
        f"p99 < {TARGET_P99_MS:g} ms",
        ok(r_lat["p99_ms"] is not None and r_lat["p99_ms"] < TARGET_P99_MS),
    )
    table.add_row(
        "  server CPU per event at that rate",
        f"{r_lat['server_cpu_us_per_event']} µs",
        f"{f_lat['server_cpu_us_per_event']} µs",
        "",
        "",
    )
    table.add_row(
        "  delivered / missing",
        f"{r_lat['received']:,} / {r_lat['missing']}",
        f"{f_lat['received']:,} / {f_lat['missing']}",
        "",
        "",
    )
    share = r_fan["per_s"] / max(1, f_fan["per_s"])
    table.add_row(
        f"fan-out, {cfg['fanout']:,} events as fast as possible",
        f"{r_fan['per_s']:,} /s",
        f"{f_fan['per_s']:,} /s",
        f">= {TARGET_FANOUT_SHARE:.0%} of floor",
        f"{ok(share >= TARGET_FANOUT_SHARE)} ({share:.0%})",
    )
    table.add_row(
        "  server CPU per event (share of a core)",
        f"{r_fan['server_cpu_us_per_event']} µs ({r_fan['server_cpu_share']:.0%})",
        f"{f_fan['server_cpu_us_per_event']} µs ({f_fan['server_cpu_share']:.0%})",
        "",
        "",
    )
    quiet = result.get("fanout_no_acks")
    if quiet is not None:
        table.add_row(
            "  Relay with clients not acking (what acks cost; diagnostic)",
            f"{quiet['per_s']:,} /s, {quiet['server_cpu_us_per_event']} µs",
            "",
            "",
            "",
        )
    table.add_row(
        "  delivered / missing; p99 (a backlog: the publisher outruns the server)",
        f"{r_fan['received']:,} / {r_fan['missing']}; {r_fan['p99_ms']} ms",
        f"{f_fan['received']:,} / {f_fan['missing']}; {f_fan['p99_ms']} ms",
        "",
        "",
    )
    r_mem = mem["Relay"]
    table.add_row(
        f"memory per idle socket, {cfg['idle_sockets']:,} sockets offering deflate",
        f"{r_mem['kb_per_socket']} KB",
        f"{mem['floor']['kb_per_socket']} KB (deflate off), {mem['floor, deflate accepted']['kb_per_socket']} KB"
        " (deflate on)",
        f"< {TARGET_KB_PER_SOCKET:g} KB",
        ok(r_mem["kb_per_socket"] < TARGET_KB_PER_SOCKET),
    )
    table.add_row(
        "  sockets held; connect rate",
        f"{r_mem['sockets']:,}; {r_mem['connect_per_s']:,}/s",
        f"{mem['floor']['sockets']:,}; {mem['floor']['connect_per_s']:,}/s  /  "
        f"{mem['floor, deflate accepted']['sockets']:,}; {mem['floor, deflate accepted']['connect_per_s']:,}/s",
        "",
        "",
    )
    table.add_row(
        f"end to end via a worker: submit -> task.completed, {e2e['tasks']} echo tasks at {e2e['rate_per_s']:g}/s",
        f"{e2e['p50_ms']} / {e2e['p99_ms']} ms (p50 / p99)",
        "-",
        "",
        f"{e2e['completed']}/{e2e['submitted']} completed; {e2e['finished_before_subscribe']} done before subscribe",
    )
    console.print(table)
    split = "; ".join(f"{name} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms" for name, v in e2e["split"].items())
    console.print(f"End to end, split: {split}", highlight=False)
    tasks = result["tasks"]
    note = (
        f"{tasks['made']:,} tasks made through the API in {tasks['seconds']} s"
        + (
            f"; only {tasks['made']:,} of {tasks['wanted']:,}: sockets share tasks"
            if tasks["made"] < tasks["wanted"]
            else ""
        )
        + ". Relay's events: task.progress on relay:live:{task_id}, acked by the clients."
    )
    console.print(note, highlight=False)

    cpu = Table(title="CPU seconds per process group (% of one core over the phase)", title_justify="left")
    cpu.add_column("group")
    phases = [
        ("e2e", e2e),
        ("latency floor", f_lat),
        ("latency Relay", r_lat),
        ("fan-out floor", f_fan),
        ("fan-out Relay", r_fan),
    ]
    for name, _ in phases:
        cpu.add_column(name, justify="right")
    for group in GROUPS:
        cells = [
            f"{p['cpu_s'][group]:.2f} ({100 * p['cpu_s'][group] / max(p['cpu_wall_s'], 1e-9):.0f}%)" for _, p in phases
        ]
        cpu.add_row("rest of box" if group == "other" else group, *cells)
    console.print(cpu)
    busy = [
        f"{name} ({100 * p['cpu_s']['other'] / max(p['cpu_wall_s'], 1e-9):.0f}% of a core)"
        for name, p in phases
        if p["cpu_s"]["other"] / max(p["cpu_wall_s"], 1e-9) > OTHER_LOAD_WARN
    ]
    if busy:
        console.print(
            f"[yellow]Other work on the box[/] during {', '.join(busy)}: latency and rates there are disturbed; "
            "CPU per event (the server's own /proc time) much less so.",
            highlight=False,
        )

    problems = []
    for name, m in mem.items():
        if m["failures"]:
            problems.append(f"memory {name}: connect/subscribe failures {m['failures']}")
        if m["sockets"] < m["wanted"]:
            problems.append(f"memory {name}: {m['sockets']:,} of {m['wanted']:,} sockets subscribed")
    for name, c in result["connect"].items():
        if c["failures"]:
            problems.append(f"{name}: connect/subscribe failures {c['failures']}")
    no_acks = {"Relay": result["fanout_no_acks"]} if "fanout_no_acks" in result else {}
    for phase, figures in (("latency", lat), ("fan-out", fan), ("fan-out without acks", no_acks)):
        for name, f in figures.items():
            if f["missing"]:
                problems.append(f"{phase} {name}: {f['missing']} events missing")
            if f["closes"]:
                problems.append(f"{phase} {name}: sockets closed {f['closes']}")
            if f["errors"]:
                problems.append(f"{phase} {name}: error frames {f['errors']}")
    if e2e["failures"]:
        problems.append(f"e2e: {e2e['failures']}")
    if result["tasks"]["errors"]:
        problems.append(f"making tasks: {result['tasks']['errors']}")
    for name, found in result.get("logs", {}).items():
        if found["counts"]:
            problems.append(f"{name} log: {found['counts']}")
            problems.extend(f"    {line}" for line in found["samples"])
    console.print("\n[bold]Seen[/]: " + ("nothing amiss" if not problems else ""))
    for line in problems:
        console.print(f"  {line}", highlight=False, soft_wrap=True)

    for name, spots in result.get("profile", {}).items():
        console.print(
            f"\n[bold]py-spy --gil: {name}[/] ({spots['samples']} samples holding the GIL, one fan-out round at "
            f"{spots['fanout_per_s_while_profiled']:,} events/s while profiled)"
        )
        for title, key in (
            ("own time by package", "packages"),
            ("own time by function", "own"),
            ("Relay's functions, including callees", "ours"),
        ):
            if spots[key]:
                console.print(f"  {title}:", highlight=False)
                for func, pct in spots[key]:
                    console.print(f"    {pct:5.1f}%  {func}", highlight=False, soft_wrap=True)
        console.print(f"  raw: {spots['file']}", highlight=False, soft_wrap=True)
