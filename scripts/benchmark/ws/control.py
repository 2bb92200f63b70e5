"""The WebSocket bench's tools: the client processes and their commands, the servers, the event publisher."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psutil

from schemas.events import Event, EventType
from scripts.benchmark.meter import CpuMeter as BaseCpuMeter
from scripts.benchmark.meter import percentile, rounded
from scripts.benchmark.stack import API_KEY, Service, Stack

GROUPS = ("api", "floor", "worker", "redis", "clients", "bench", "other")

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
# After the last publish: wait until every event arrived, or nothing arrived for STALL_S, or DRAIN_S passed.
STALL_S = 3.0
DRAIN_S = 30.0
POLL_S = 0.1


class ClientProc:
    """One ``scripts.benchmark.ws.client`` process, driven over its unix socket."""

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
    url: str  # ws://... (http://... for Server-Sent Event streams)
    prefix: str  # channel prefix its events are published under
    relay: bool
    sse: bool = False  # the clients follow each task over GET /v1/tasks/{id}/stream instead of a socket

    def pid(self, stack: Stack) -> int:
        return stack.services[self.service].popen.pid


class CpuMeter(BaseCpuMeter):
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
        "p50_ms": rounded(percentile(latencies, 50), 2),
        "p99_ms": rounded(percentile(latencies, 99), 2),
        "max_ms": rounded(latencies[-1] if latencies else None, 2),
    }


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
        got = sum(int(r["events"]) for r in await asyncio.gather(*(c.call("count", 10) for c in clients)))
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
    if target.sse:
        replies = await asyncio.gather(
            *(
                c.call("connect_sse", url=target.url, subs=part, concurrency=concurrency, timeout_s=SOCKET_TIMEOUT_S)
                for c, part in zip(clients, parts, strict=True)
            )
        )
        return {
            "subscribed": sum(r["subscribed"] for r in replies),
            "wanted": len(subs),
            "seconds": max(r["seconds"] for r in replies),
            "failures": merge_failures(list(replies)),
        }
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
