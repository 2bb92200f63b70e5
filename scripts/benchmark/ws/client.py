"""One WebSocket client process of ``scripts/bench --ws``: holds many sockets and measures what they receive.

    python -m scripts.benchmark.ws.client SOCKET_PATH

The bench starts a few of these (so client CPU does not share a process with the server or the bench) and
drives them over a unix socket, one JSON command per line, one JSON reply per line:

  connect   open one socket per (task_id, token) and subscribe it; reply when all are subscribed (or failed)
  connect_sse  open one Server-Sent Events stream per (task_id, token) (GET /v1/tasks/{id}/stream?token=);
            reply when every stream has sent its ``subscribed`` event (or failed)
  reset     forget what was received so far
  count     events received so far
  acks      {"on": false} stops acking Relay's events (to show what acks cost the server), true resumes
  stats     frames and events received, latencies (receive time minus the event's created_at), closes
  close     close every socket
  e2e       pre-connect N sockets to Relay, then submit N echo tasks (paced), subscribe each on its socket
            as soon as the API answers, and time submit -> task.completed on the socket
  loop_open open L sockets to Relay for task_loop (held like connect's; close closes them)
  task_loop closed loop of N WebSocket-only echo tasks over those sockets, one task at a time on each: submit,
            subscribe, ack its events, unsubscribe after task.completed, submit the next
  exit

Relay's protocol is followed as a browser would: answer ``ping`` with ``pong``, ack every event. The floor
(``scripts.benchmark.ws.floor``) gets the same subscribe frame and no acks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import resource
import sys
import time
from datetime import datetime
from typing import Any

import aiohttp
import msgspec

# Largest command or reply line.
LINE_LIMIT = 256 * 1024 * 1024
# Connection attempts per socket before it counts as failed.
CONNECT_ATTEMPTS = 3


class _Event(msgspec.Struct):
    id: str = ""
    task_id: str = ""
    seq: int = 0
    type: str = ""
    created_at: str = ""


class _Frame(msgspec.Struct):
    type: str = ""
    event: _Event | None = None
    task_id: str | None = None
    status: str | None = None
    code: str | None = None


class _Accepted(msgspec.Struct):
    id: str
    ws_token: str | None = None


_decode = msgspec.json.Decoder(_Frame).decode
_PONG = '{"type":"pong"}'


def _ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


class Clients:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.streams: list[aiohttp.ClientResponse] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.acking = True  # off only to show what acks cost the server
        self.loop_sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.events = 0
        self.latencies: list[float] = []
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.closes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.pings = 0

    async def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
        return self.session

    # Receiving.

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, ack: bool) -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._frame(ws, msg.data, ack)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    self.closes[str(ws.close_code)] += 1
                    return
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    self.closes[f"error {type(msg.data).__name__}"] += 1
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.closes[f"exception {type(exc).__name__}"] += 1

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, data: str, ack: bool) -> None:
        now = time.time()
        self.frames += 1
        frame = _decode(data)
        event = frame.event
        if event is not None:
            self.events += 1
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.latencies.append(round((now - _ts(event.created_at)) * 1000, 3))
            if ack and self.acking:
                await ws.send_str('{"type":"ack","event_id":"' + event.id + '"}')
        elif frame.type == "ping":
            self.pings += 1
            await ws.send_str(_PONG)
        elif frame.type == "error":
            self.errors[frame.code or "error"] += 1

    def _start_reader(self, ws: aiohttp.ClientWebSocketResponse, ack: bool) -> None:
        task = asyncio.create_task(self._read(ws, ack))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read_stream(self, response: aiohttp.ClientResponse) -> None:
        """Event lines of one stream: ``data:`` after an ``event:`` other than subscribed is an Event."""
        event_type = b""
        try:
            async for line in response.content:
                if line.startswith(b"event: "):
                    event_type = line[7:].strip()
                elif line.startswith(b"data: ") and event_type and event_type != b"subscribed":
                    now = time.time()
                    self.frames += 1
                    event = msgspec.json.decode(line[6:], type=_Event)
                    self.events += 1
                    if self.first_at is None:
                        self.first_at = now
                    self.last_at = now
                    self.latencies.append(round((now - _ts(event.created_at)) * 1000, 3))
                elif line in (b"\n", b"\r\n"):
                    event_type = b""
            self.closes["stream ended"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.closes[f"stream {type(exc).__name__}"] += 1

    async def _open_stream(
        self, base_url: str, task_id: str, token: str, timeout_s: float, failures: collections.Counter[str]
    ) -> aiohttp.ClientResponse | None:
        session = await self._session()
        url = f"{base_url}/v1/tasks/{task_id}/stream"
        for attempt in range(CONNECT_ATTEMPTS):
            response = None
            try:
                response = await asyncio.wait_for(
                    session.get(url, params={"token": token}, timeout=aiohttp.ClientTimeout(total=None)), timeout_s
                )
                if response.status != 200:
                    failures[f"stream HTTP {response.status}"] += 1
                    response.release()
                else:
                    # Up to the subscribed event's data line: from then on the stream is live.
                    while True:
                        line = await asyncio.wait_for(response.content.readline(), timeout_s)
                        if not line:
                            failures["stream ended before subscribed"] += 1
                            break
                        if line.startswith(b"data: "):
                            return response
            except Exception as exc:
                failures[f"stream: {type(exc).__name__}"] += 1
            if response is not None:
                response.close()
            await asyncio.sleep(random.uniform(0, 0.25 * 2**attempt))
        return None

    async def connect_sse(self, url: str, subs: list[list[str]], concurrency: int, timeout_s: float) -> dict[str, Any]:
        failures: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        pending = iter(subs)
        subscribed = 0

        async def lane() -> None:
            nonlocal subscribed
            for task_id, token in pending:
                response = await self._open_stream(url, task_id, token, timeout_s, failures)
                if response is None:
                    continue
                self.streams.append(response)
                task = asyncio.create_task(self._read_stream(response))
                self.readers.add(task)
                task.add_done_callback(self.readers.discard)
                subscribed += 1

        await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(subs))))))
        return {
            "subscribed": subscribed,
            "wanted": len(subs),
            "failures": dict(failures),
            "seconds": round(time.perf_counter() - started, 3),
            "sockets": len(self.streams),
        }

    # Connecting.

    async def _open(
        self, url: str, compress: bool, timeout_s: float, failures: collections.Counter[str]
    ) -> aiohttp.ClientWebSocketResponse | None:
        session = await self._session()
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                return await asyncio.wait_for(
                    session.ws_connect(url, compress=15 if compress else 0, autoping=True, max_msg_size=0),
                    timeout_s,
                )
            except Exception as exc:
                failures[f"connect: {type(exc).__name__}"] += 1
            await asyncio.sleep(random.uniform(0, 0.25 * 2**attempt))
        return None

    async def _subscribe(
        self, ws: aiohttp.ClientWebSocketResponse, task_id: str, token: str, timeout_s: float
    ) -> _Frame | str:
        await ws.send_str(json.dumps({"type": "subscribe", "task_id": task_id, "token": token, "after_seq": 0}))
        while True:
            msg = await asyncio.wait_for(ws.receive(), timeout_s)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return f"closed {ws.close_code}"
            frame = _decode(msg.data)
            if frame.type == "subscribed":
                return frame
            if frame.type == "error":
                return f"error {frame.code}"
            if frame.type == "ping":
                await ws.send_str(_PONG)

    async def connect(
        self, url: str, subs: list[list[str]], relay: bool, compress: bool, concurrency: int, timeout_s: float
    ) -> dict[str, Any]:
        failures: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        pending = iter(subs)
        subscribed = 0

        async def lane() -> None:
            nonlocal subscribed
            for task_id, token in pending:
                for attempt in range(CONNECT_ATTEMPTS):
                    ws = await self._open(url, compress, timeout_s, failures)
                    if ws is None:
                        break
                    try:
                        answer = await self._subscribe(ws, task_id, token, timeout_s)
                    except Exception as exc:
                        answer = f"subscribe: {type(exc).__name__}"
                    if isinstance(answer, _Frame):
                        self.sockets.append(ws)
                        self._start_reader(ws, ack=relay)
                        subscribed += 1
                        break
                    failures[answer] += 1
                    with contextlib.suppress(Exception):
                        await ws.close()
                    await asyncio.sleep(random.uniform(0, 0.25 * 2**attempt))

        await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(subs))))))
        return {
            "subscribed": subscribed,
            "wanted": len(subs),
            "failures": dict(failures),
            "seconds": round(time.perf_counter() - started, 3),
            "sockets": len(self.sockets),
        }

    async def close(self) -> dict[str, Any]:
        sockets, self.sockets = self.sockets, []
        self.loop_sockets = []

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

        for start in range(0, len(sockets), 500):
            await asyncio.gather(*(one(ws) for ws in sockets[start : start + 500]))
        streams, self.streams = self.streams, []
        for response in streams:
            response.close()
        for task in list(self.readers):
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        return {"closed": len(sockets) + len(streams)}

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "events": self.events,
            "latencies_ms": self.latencies,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "closes": dict(self.closes),
            "errors": dict(self.errors),
            "pings": self.pings,
            "open": sum(1 for ws in self.sockets if not ws.closed) + sum(1 for r in self.streams if not r.closed),
        }

    # End to end through a worker.

    async def e2e(self, api: str, ws_url: str, key: str, n: int, rate: float, timeout_s: float) -> dict[str, Any]:
        """Pre-connect n sockets; submit echo task i at start + i / rate; subscribe it on socket i at once."""
        session = await self._session()
        failures: collections.Counter[str] = collections.Counter()
        sockets: list[aiohttp.ClientWebSocketResponse | None] = list(
            await asyncio.gather(*(self._open(ws_url, False, timeout_s, failures) for _ in range(n)))
        )
        completed: dict[str, float] = {}
        created: dict[str, float] = {}  # the completed event's created_at (the worker's clock)
        submitted: dict[str, float] = {}
        accepted_at: dict[str, float] = {}
        status_at_subscribe: dict[str, str] = {}
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

        async def follow(ws: aiohttp.ClientWebSocketResponse, task_id: str, token: str) -> None:
            await ws.send_str(json.dumps({"type": "subscribe", "task_id": task_id, "token": token, "after_seq": 0}))
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    failures[f"closed {ws.close_code}"] += 1
                    return
                now = time.time()
                frame = _decode(msg.data)
                if frame.type == "subscribed":
                    status_at_subscribe[task_id] = frame.status or ""
                elif frame.type == "ping":
                    await ws.send_str(_PONG)
                elif frame.type == "error":
                    failures[f"error {frame.code}"] += 1
                    return
                elif frame.event is not None:
                    await ws.send_str('{"type":"ack","event_id":"' + frame.event.id + '"}')
                    if frame.event.type in ("task.completed", "task.failed"):
                        completed[task_id] = now
                        created[task_id] = _ts(frame.event.created_at)
                        return

        async def one(i: int, due: float) -> None:
            ws = sockets[i]
            if ws is None:
                return
            body = json.dumps({"kind": "echo", "input": {"i": i}, "websocket": True})
            try:
                async with session.post(api + "/v1/tasks", data=body, headers=headers) as response:
                    raw = await response.read()
                    if response.status != 202:
                        failures[f"submit HTTP {response.status}"] += 1
                        return
                accepted = msgspec.json.decode(raw, type=_Accepted)
                submitted[accepted.id] = due  # from when it was due: no coordinated omission
                accepted_at[accepted.id] = time.time()
                await asyncio.wait_for(follow(ws, accepted.id, accepted.ws_token or ""), timeout_s)
            except Exception as exc:
                failures[f"e2e: {type(exc).__name__}"] += 1

        start = time.time() + 0.05
        runs = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            runs.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*runs)
        for ws in sockets:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
        latencies = sorted(round((completed[t] - s) * 1000, 3) for t, s in submitted.items() if t in completed)
        replayed = {t for t, s in status_at_subscribe.items() if s in ("succeeded", "failed")}
        return {
            # submit -> 202; submit -> the worker's completed event; that event -> the socket, when pushed live
            "accept_ms": sorted(round((accepted_at[t] - s) * 1000, 3) for t, s in submitted.items()),
            "to_event_ms": sorted(round((created[t] - s) * 1000, 3) for t, s in submitted.items() if t in created),
            "push_live_ms": sorted(
                round((completed[t] - created[t]) * 1000, 3) for t in completed if t not in replayed
            ),
            "tasks": n,
            "submitted": len(submitted),
            "completed": len(completed),
            "latencies_ms": latencies,
            "finished_before_subscribe": len(replayed),
            "failures": dict(failures),
        }

    # A closed loop of WebSocket-only tasks.

    async def loop_open(self, url: str, lanes: int, timeout_s: float) -> dict[str, Any]:
        """Open ``lanes`` sockets for :meth:`task_loop` (before its clock starts)."""
        failures: collections.Counter[str] = collections.Counter()
        opened = await asyncio.gather(*(self._open(url, False, timeout_s, failures) for _ in range(lanes)))
        self.loop_sockets = [ws for ws in opened if ws is not None]
        self.sockets.extend(self.loop_sockets)  # closed by close()
        return {"opened": len(self.loop_sockets), "failures": dict(failures)}

    async def task_loop(self, api: str, key: str, n: int, timeout_s: float) -> dict[str, Any]:
        """n echo tasks with ``"websocket": true`` and no webhook, one at a time on each socket of loop_open: submit,
        subscribe as soon as the API answers, ack every event (so that each delivery settles as acked), unsubscribe
        after task.completed and submit the next. Times submit -> task.completed on the socket."""
        session = await self._session()
        failures: collections.Counter[str] = collections.Counter()
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        indexes = iter(range(n))
        latencies: list[float] = []
        counts = {"submitted": 0, "acks": 0, "finished_before_subscribe": 0}

        async def follow(ws: aiohttp.ClientWebSocketResponse, task_id: str, token: str) -> bool:
            """Until the task's final event (True), or the socket closes (False)."""
            await ws.send_str(json.dumps({"type": "subscribe", "task_id": task_id, "token": token, "after_seq": 0}))
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    failures[f"closed {ws.close_code}"] += 1
                    return False
                frame = _decode(msg.data)
                if frame.type == "subscribed":
                    if frame.status in ("succeeded", "failed"):
                        counts["finished_before_subscribe"] += 1
                elif frame.type == "ping":
                    await ws.send_str(_PONG)
                elif frame.type == "error":
                    failures[f"error {frame.code}"] += 1
                    return True  # refused: the socket goes on with the next task
                elif frame.event is not None:
                    await ws.send_str('{"type":"ack","event_id":"' + frame.event.id + '"}')
                    counts["acks"] += 1
                    if frame.event.task_id == task_id and frame.event.type in ("task.completed", "task.failed"):
                        await ws.send_str(json.dumps({"type": "unsubscribe", "task_id": task_id}))
                        return True

        async def lane(ws: aiohttp.ClientWebSocketResponse) -> None:
            for i in indexes:  # one iterator shared by every lane
                body = json.dumps({"kind": "echo", "input": {"i": i}, "websocket": True})
                started = time.time()
                try:
                    async with session.post(api + "/v1/tasks", data=body, headers=headers) as response:
                        raw = await response.read()
                        if response.status != 202:
                            failures[f"submit HTTP {response.status}"] += 1
                            continue
                    accepted = msgspec.json.decode(raw, type=_Accepted)
                    counts["submitted"] += 1
                    before = len(failures)
                    if not await asyncio.wait_for(follow(ws, accepted.id, accepted.ws_token or ""), timeout_s):
                        return  # the socket closed: the other lanes take the rest
                    if len(failures) == before:
                        latencies.append(round((time.time() - started) * 1000, 3))
                except Exception as exc:
                    failures[f"loop: {type(exc).__name__}"] += 1

        await asyncio.gather(*(lane(ws) for ws in self.loop_sockets))
        return {**counts, "completed": len(latencies), "latencies_ms": latencies, "failures": dict(failures)}


async def serve(path: str) -> None:
    clients = Clients()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not done.is_set():
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "connect":
                    reply: dict[str, Any] = await clients.connect(**cmd)
                elif op == "connect_sse":
                    reply = await clients.connect_sse(**cmd)
                elif op == "reset":
                    clients.reset()
                    reply = {}
                elif op == "acks":
                    clients.acking = bool(cmd["on"])
                    reply = {}
                elif op == "count":
                    reply = {"events": clients.events, "frames": clients.frames}
                elif op == "stats":
                    reply = clients.stats()
                elif op == "close":
                    reply = await clients.close()
                elif op == "e2e":
                    reply = await clients.e2e(**cmd)
                elif op == "loop_open":
                    reply = await clients.loop_open(**cmd)
                elif op == "task_loop":
                    reply = await clients.task_loop(**cmd)
                elif op == "exit":
                    reply = {}
                    done.set()
                else:
                    reply = {"error": f"unknown op {op}"}
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path, limit=LINE_LIMIT)
    print(f"ready {os.getpid()}", flush=True)
    async with server:
        await done.wait()
    await clients.close()
    if clients.session is not None:
        await clients.session.close()


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
