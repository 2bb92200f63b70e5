"""The raw floor for Relay's WebSocket figures (``scripts/bench --ws``).

A bare Litestar app with one WebSocket route, fed by one Redis pub/sub pattern subscription, run under
uvicorn the way ``relay api`` runs (same uvicorn options; permessage-deflate off unless ``--deflate``).
No acks, no history, no tokens, no presence keys: a client sends ``{"type":"subscribe","task_id":X}``, gets
``{"type":"subscribed","task_id":X}``, then every message published on ``{prefix}X`` exactly as published.

Each socket has a bounded send queue drained by its own sender task (as Relay's sockets do): the listener
never waits on a slow client. That is the least any push server must do, so it is the floor.

    python -m scripts.benchmark.ws.floor --port 8100 --redis redis://127.0.0.1:6379/0 [--prefix floor:live:] [--deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import redis.asyncio as aioredis
from litestar import Litestar, WebSocket, websocket

log = logging.getLogger("floor")

# Frames one socket may have waiting (Relay's SEND_QUEUE_FRAMES).
SEND_QUEUE_FRAMES = 1024
# The largest frame a client may send (Relay's WS_MAX_FRAME_BYTES).
WS_MAX_FRAME_BYTES = 64 * 1024
# How long startup waits for the pattern subscription.
SUBSCRIBE_TIMEOUT_S = 10.0


class _ClientFrame(msgspec.Struct):
    type: str = ""
    task_id: str = ""


_decode = msgspec.json.Decoder(_ClientFrame).decode
_encode = msgspec.json.Encoder().encode


def create_app(redis_url: str, prefix: str) -> Litestar:
    followers: dict[bytes, set[asyncio.Queue[bytes]]] = {}
    stats = {"dropped": 0}

    async def listen(redis: aioredis.Redis, subscribed: asyncio.Event) -> None:
        pubsub = redis.pubsub()
        try:
            await pubsub.psubscribe(prefix + "*")
            subscribed.set()
            async for message in pubsub.listen():
                if message["type"] != "pmessage":
                    continue
                queues = followers.get(message["channel"])
                if not queues:
                    continue
                frame = message["data"]
                for queue in queues:
                    try:
                        queue.put_nowait(frame)
                    except asyncio.QueueFull:
                        stats["dropped"] += 1
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        subscribed = asyncio.Event()
        listener = asyncio.create_task(listen(redis, subscribed))
        await asyncio.wait_for(subscribed.wait(), SUBSCRIBE_TIMEOUT_S)
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            await redis.aclose()
            if stats["dropped"]:
                log.warning("dropped %d frames on full send queues", stats["dropped"])

    async def send_loop(socket: WebSocket[Any, Any, Any], queue: asyncio.Queue[bytes]) -> None:
        with contextlib.suppress(Exception):  # the client went away; the receive loop ends too
            while True:
                frame = await queue.get()
                await socket.send_text(frame.decode())

    @websocket("/ws")
    async def ws(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        queue: asyncio.Queue[bytes] = asyncio.Queue(SEND_QUEUE_FRAMES)
        channels: list[bytes] = []
        sender = asyncio.create_task(send_loop(socket, queue))
        try:
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text") or message.get("bytes") or b""
                try:
                    frame = _decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if frame.type == "subscribe" and frame.task_id:
                    channel = (prefix + frame.task_id).encode()
                    followers.setdefault(channel, set()).add(queue)
                    channels.append(channel)
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(_encode({"type": "subscribed", "task_id": frame.task_id}))
        except Exception:  # noqa: S110 -- a client that went away (uvicorn raises ClientDisconnected)
            pass
        finally:
            for channel in channels:
                queues = followers.get(channel)
                if queues is not None:
                    queues.discard(queue)
                    if not queues:
                        del followers[channel]
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return Litestar(route_handlers=[ws], lifespan=[lifespan], debug=False)


class _QuietSockets(logging.Filter):
    """As ``relay api``: drop uvicorn's two lines per WebSocket."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in ("connection open", "connection closed")


def _log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"quiet_sockets": {"()": _QuietSockets}}
    config["handlers"]["default"]["filters"] = ["quiet_sockets"]
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="Redis URL")
    parser.add_argument("--prefix", default="floor:live:", help="channel prefix; the pattern is PREFIX*")
    parser.add_argument("--deflate", action="store_true", help="accept permessage-deflate (uvicorn's default)")
    args = parser.parse_args()

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(args.redis, args.prefix),
        log_config=_log_config(),
        host=args.host,
        port=args.port,
        ws_per_message_deflate=args.deflate,
        ws_max_size=WS_MAX_FRAME_BYTES,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
