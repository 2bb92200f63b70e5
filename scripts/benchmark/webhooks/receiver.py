"""The webhook receiver of the webhook bench, a process of its own.

python -m scripts.benchmark.webhooks.receiver PORT HANG_PORT DEAD_PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import msgspec

from scripts.benchmark.stack import new_loop

# How long the hanging destination of the bad day takes to answer.
HANG_S = 20.0


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


def main(argv: list[str]) -> None:
    port, hang_port, dead_port = (int(arg) for arg in argv)
    run_receiver(port, hang_port, dead_port)


if __name__ == "__main__":
    main(sys.argv[1:])
