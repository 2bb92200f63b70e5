"""Helpers for tests that run real processes: our `relay api` / `relay worker`, and a webhook receiver."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from delivery import keys, shares
from service.processes import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
RELAY = [sys.executable, "-m", "service.cli"]
# How long what a stopped process leaves (a helper such as multiprocessing's resource tracker) may take to go.
GROUP_EXIT_GRACE_S = 3.0


def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 20.0, interval_s: float = 0.05, message: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    try:
        return wait_for(predicate, timeout_s=timeout_s, interval_s=interval_s, message=message)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def wait_heartbeats_past(
    redis: Any, moment: float, *, sets: Iterable[str] = (shares.WORKERS, shares.API_NODES), timeout_s: float = 30.0
) -> None:
    """Wait until every process in the membership ``sets`` (workers, API nodes) has renewed its heartbeat at
    ``moment`` (unix time) or later. A process's heartbeat runs on the loop of its periodic jobs (the sweeper, lease
    renewal, the epoch's looks), so a beat it wrote after ``moment`` shows that loop ran past it, which a sleep of
    the test's own cannot show. ``redis``: a synchronous client of the store."""

    def renewed() -> bool:
        for key in sets:
            expiries = [score for _, score in redis.zrange(key, 0, -1, withscores=True)]
            if not expiries or min(expiries) - shares.MEMBER_TTL_S < moment:
                return False
        return True

    wait_until(renewed, timeout_s=timeout_s, message=f"every process's heartbeat renewed after {moment:.3f}")


def store_layout() -> keys.Layout:
    """The partitions of the stores the tests' Relay processes use (TEST_PARTITIONS, else one)."""
    return keys.Layout.of(int(os.environ.get("TEST_PARTITIONS") or 1))


def relay_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """A child environment for Relay: test tenants, fast retries, private callbacks allowed (loopback receiver)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_REDIS_URL=redis_url,
        RELAY_API_KEYS="acme=key-acme,globex=key-globex",
        RELAY_ADMIN_TOKEN="admin-token",
        RELAY_ALLOW_PRIVATE_CALLBACKS="true",
        RELAY_RETRY_SCHEDULE="0.2,0.4,0.6",
        RELAY_WEBHOOK_TIMEOUT="3",
        PYTHONUNBUFFERED="1",
    )
    if os.environ.get("TEST_PARTITIONS"):  # the suite on a store cut into that many partitions
        env["RELAY_PARTITIONS"] = os.environ["TEST_PARTITIONS"]
    env.update(overrides)
    return env


class RelayProcess:
    """One `relay api` or `relay worker` child process, its output kept in a log file.

    ``prefix`` goes before the command (``ip netns exec <ns>`` runs it on another host, see tests/hosts.py; it must
    exec the command, so that the child's id is the process's own); an API listens on ``host``.
    """

    def __init__(
        self, role: str, env: Mapping[str, str], *args: str, prefix: Sequence[str] = (), host: str = "127.0.0.1"
    ) -> None:
        self.role = role
        self.env = dict(env)
        self.args = list(args)
        self.prefix = list(prefix)
        self.host = host
        self.port = free_port() if role == "api" else None
        self.log_path = Path(tempfile.mkstemp(prefix=f"relay-{role}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self._signalled = False

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://{self.host}:{self.port}"

    def start(self, *, wait: bool = True) -> RelayProcess:
        cmd = [*self.prefix, *RELAY, self.role, *self.args]
        if self.role == "api":
            cmd += ["--host", self.host, "--port", str(self.port)]
        self._signalled = False
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"relay {self.role} exited ({self.process.returncode}):\n{self.output()}")
            if self.role == "api":
                try:
                    return httpx.get(self.url + "/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False
            return "Worker process is ready for action" in self.output()

        wait_until(ready, timeout_s=timeout_s, interval_s=0.1, message=f"relay {self.role} to start")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def signal_stop(self) -> None:
        """SIGTERM once (a second one stops at once, without the clean shutdown)."""
        if self.process is not None and self.process.poll() is None and not self._signalled:
            self._signalled = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait (a clean shutdown); kill after ``timeout_s``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            # The leader only: the worker's supervisor passes one SIGTERM on to each worker process.
            self.signal_stop()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"relay {self.role} did not stop within {timeout_s:g} s:\n{self.output()[-3000:]}"
                ) from None
        # A process of its group that outlives the leader for long is what a user would find left running: fail.
        deadline = time.monotonic() + GROUP_EXIT_GRACE_S
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except (ProcessLookupError, PermissionError):
                return self.process.returncode
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)
        raise AssertionError(f"relay {self.role} exited but left processes of its group running")

    def restart(self) -> RelayProcess:
        self.stop()
        return self.start()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP receiver (aiohttp, in a thread) that records every webhook.

    ``responses[path]`` is a list of (status, headers) answers used in turn; the last one repeats.
    Paths without a script answer 200. ``delays[path]`` likewise lists seconds to hold each request
    (recorded on arrival) before answering; the last one repeats; paths without one answer at once.
    """

    port: int
    host: str = "127.0.0.1"
    received: list[Received] = field(default_factory=list)
    responses: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delays: dict[str, list[float]] = field(default_factory=dict)
    open_requests: int = 0  # requests being answered now
    peak_open_requests: int = 0  # the most answered at once so far

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> str:
        self.responses[path] = [a if isinstance(a, tuple) else (a, {}) for a in answers]
        return self.url(path)

    def delay(self, path: str, *seconds: float) -> str:
        """Hold the requests to ``path`` these many seconds in turn (the last repeats) before answering."""
        self.delays[path] = list(seconds)
        return self.url(path)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout_s: float = 20.0) -> list[Received]:
        return wait_until(
            lambda: len(self.on(path)) >= count and self.on(path),
            timeout_s=timeout_s,
            message=f"{count} webhook(s) on {path}",
        )


@contextmanager
def run_receiver(port: int | None = None, host: str = "127.0.0.1") -> Iterator[Receiver]:
    """A :class:`Receiver` listening on ``host`` (loopback unless another address of this machine is given)."""
    import asyncio

    from aiohttp import web

    receiver = Receiver(port=port or free_port(), host=host)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        with receiver.lock:
            receiver.received.append(Received(request.path, dict(request.headers), body, time.time()))
            answers = receiver.responses.get(request.path)
            if answers:
                status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
            else:
                status, headers = 200, {}
            delays = receiver.delays.get(request.path)
            delay_s = (delays.pop(0) if len(delays) > 1 else delays[0]) if delays else 0.0
            receiver.open_requests += 1
            receiver.peak_open_requests = max(receiver.peak_open_requests, receiver.open_requests)
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        finally:
            with receiver.lock:
                receiver.open_requests -= 1
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, host, receiver.port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class Api:
    """A tiny client for tests: ``api.post("/v1/tasks", json=..., key="key-acme")``."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10)

    def request(self, method: str, path: str, *, key: str | None = "key-acme", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def submit(
        self, kind: str = "echo", input: Any = None, *, webhook: str | None = None, key: str = "key-acme", **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "input": input}
        if webhook is not None:
            body["webhook"] = {"url": webhook}
        body.update(extra.pop("body", {}))
        response = self.post("/v1/tasks", json=body, key=key, **extra)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def task(self, task_id: str, key: str = "key-acme") -> dict[str, Any]:
        response = self.get(f"/v1/tasks/{task_id}", key=key)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_task(self, task_id: str, *, timeout_s: float = 20.0, key: str = "key-acme") -> dict[str, Any]:
        return dict(
            wait_until(
                lambda: (t := self.task(task_id, key)) and t["status"] in ("succeeded", "failed") and t,
                timeout_s=timeout_s,
                message=f"task {task_id} to finish",
            )
        )

    def close(self) -> None:
        self.client.close()


FINAL_EVENT_TYPES = frozenset({"task.completed", "task.failed", "task.cancelled"})
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def task_events(api: Api, task_id: str, key: str = "key-acme") -> list[dict[str, Any]]:
    """Every retained event of a task, oldest first, page after page."""
    events: list[dict[str, Any]] = []
    after_seq = 0
    while True:
        response = api.get(f"/v1/tasks/{task_id}/events", key=key, params={"after_seq": after_seq})
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        after_seq = page.get("next_after_seq")
        if after_seq is None or not page["events"]:
            return events


@dataclass
class Outcome:
    """What became of the tasks a client was told were accepted, counted from the API and a receiver.

    ``not_ended_once`` counts ended tasks whose event log does not hold exactly one final event, as its last: the
    contract's "a task may run more than once after a fault; it ends once". Webhooks are at-least-once, so a
    webhook that arrived twice (the same ``webhook-id``) is counted in ``webhooks_duplicated`` and only reported.
    """

    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0  # accepted and never ended
    not_ended_once: int = 0
    webhooks_missing: int = 0  # ended tasks whose final event never reached the receiver
    webhooks_duplicated: int = 0  # arrivals beyond the first of one webhook-id
    details: list[str] = field(default_factory=list)  # the first few tasks that did not end once, and why

    def assert_every_task_completed_once(self, submitted: int) -> None:
        """Every one of ``submitted`` tasks accepted, succeeded, and ended exactly once; every webhook arrived."""
        assert self.accepted == submitted, self
        assert self.lost == 0, self
        assert self.failed == self.cancelled == 0, self  # an infrastructure fault is never a task's result
        assert self.completed == submitted, self
        assert self.not_ended_once == 0, self
        assert self.webhooks_missing == 0, self


def count_outcome(
    api: Api,
    task_ids: Iterable[str],
    *,
    receiver: Receiver | None = None,
    path: str = "/hook",
    name: str = "",
    key: str = "key-acme",
) -> Outcome:
    """Read every task and its event log (with ``key``: its tenant's, or the admin token for many tenants' tasks;
    and, with ``receiver``, the webhooks that reached ``path``) and count what became of them; print the counts
    under ``name``."""
    outcome = Outcome()
    hooks = Counter(h.headers["webhook-id"] for h in receiver.on(path)) if receiver is not None else Counter[str]()
    for task_id in dict.fromkeys(task_ids):
        outcome.accepted += 1
        task = api.task(task_id, key)
        if task["status"] not in ENDED_STATUSES:
            outcome.lost += 1
            continue
        outcome.completed += task["status"] == "succeeded"
        outcome.failed += task["status"] == "failed"
        outcome.cancelled += task["status"] == "cancelled"
        events = task_events(api, task_id, key)
        finals = [e for e in events if e["type"] in FINAL_EVENT_TYPES]
        if len(finals) != 1 or events[-1] is not finals[0]:
            outcome.not_ended_once += 1
            if len(outcome.details) < 5:
                outcome.details.append(f"{task_id}: {[e['type'] for e in events if e['type'] != 'task.progress']}")
            continue
        if receiver is not None:
            arrived = hooks.get(finals[0]["id"], 0)
            outcome.webhooks_missing += arrived == 0
            outcome.webhooks_duplicated += max(0, arrived - 1)
    print(f"{name or 'outcome'}: {outcome}")
    return outcome


def webhook_attempts(api: Api, task_id: str, key: str = "key-acme") -> list[dict[str, Any]]:
    """The webhook attempts of a task, as ``GET /v1/tasks/{id}/deliveries`` lists them."""
    response = api.get(f"/v1/tasks/{task_id}/deliveries", key=key)
    assert response.status_code == 200, response.text
    return [a for a in response.json()["attempts"] if a["channel"] == "webhook"]


def dead_letters(api: Api, key: str = "admin-token", **params: Any) -> list[dict[str, Any]]:
    """One page of ``GET /v1/dead-letters`` with these query parameters."""
    response = api.get("/v1/dead-letters", key=key, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def wait_dead_letter(api: Api, task_id: str, *, timeout_s: float = 20.0, **match: Any) -> dict[str, Any]:
    """Wait for the task's dead letter (optionally with fields equal to ``match``) and return it."""

    def found() -> dict[str, Any] | None:
        for item in dead_letters(api, task_id=task_id):
            if all(item.get(name) == value for name, value in match.items()):
                return item
        return None

    return dict(wait_until(found, timeout_s=timeout_s, message=f"a dead letter of {task_id} with {match}"))


class WsClient:
    """A test client of ``/v1/ws`` on websockets' sync client: a thread reads every frame into a queue.

    It answers the server's ``{"type": "ping"}`` with a pong unless ``answer_pings`` is false, and keeps the
    close code the server sent. ``read=False`` starts without the reading thread (a client that does not read:
    pass ``max_queue`` and a ``sock`` with a small receive buffer too); :meth:`start_reading` starts it later.
    """

    def __init__(self, base_url: str, *, answer_pings: bool = True, read: bool = True, **connect: Any) -> None:
        import queue

        from websockets.sync.client import connect as ws_connect

        url = "ws" + base_url.removeprefix("http") + "/v1/ws"
        connect.setdefault("open_timeout", 10)
        connect.setdefault("ping_interval", None)  # the protocol-level keepalive is uvicorn's business
        connect.setdefault("legacy", True)  # websockets >= 17.1: a connection returned directly, not a context
        self.connection = ws_connect(url, **connect)
        self.answer_pings = answer_pings
        self.frames: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.pings = 0
        self.ping_times: list[float] = []  # monotonic, as each ping arrived
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._thread: threading.Thread | None = None
        if read:
            self.start_reading()

    def start_reading(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import json

        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                frame = json.loads(self.connection.recv())
                if frame.get("type") == "ping":
                    self.pings += 1
                    self.ping_times.append(time.monotonic())
                    if self.answer_pings:
                        self.send({"type": "pong"})
                    continue
                self.frames.put(frame)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        finally:
            self.closed.set()
            self.frames.put(None)

    def send(self, frame: Mapping[str, Any]) -> None:
        import json

        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # the reading thread sees the close and records its code
            self.connection.send(json.dumps(frame))

    def send_raw(self, data: str | bytes) -> None:
        self.connection.send(data)

    def subscribe(self, task: Mapping[str, Any], *, after_seq: int = 0, token: str | None = None) -> None:
        self.send(
            {"type": "subscribe", "task_id": task["id"], "token": token or task["ws_token"], "after_seq": after_seq}
        )

    def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next frame other than a ping; fails the test when none comes or the socket closed."""
        import queue

        try:
            frame = self.frames.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no frame within {timeout_s} s") from None
        if frame is None:
            self.frames.put(None)  # every later recv() fails the same way
            raise AssertionError(f"the socket closed ({self.close_code})")
        return frame

    def events_until_final(self, task_id: str, *, ack: bool = False, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Events of ``task_id`` up to its final one (frames of other tasks are dropped)."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if frame["type"] != "event" or frame["event"]["task_id"] != task_id:
                continue
            event = frame["event"]
            events.append(event)
            if ack:
                self.send({"type": "ack", "event_id": event["id"]})
            if event["type"] in ("task.completed", "task.failed", "task.cancelled"):
                return events

    def frames_until_closed(self, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Every frame (pings aside) until the server closes the socket."""
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                frames.append(self.recv(max(0.0, deadline - time.monotonic())))
            except AssertionError:
                if self.closed.is_set():
                    return frames
                raise

    def wait_closed(self, timeout_s: float = 10.0) -> int | None:
        """The close code the server sent (1006 when it sent none) once the socket is closed."""
        if not self.closed.wait(timeout_s):
            raise AssertionError(f"the socket is still open after {timeout_s} s")
        return self.close_code

    def close(self) -> None:
        self.connection.close()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class SseMessage:
    """One Server-Sent Events message as a client reads it, or a comment line (``comment`` set)."""

    event: str | None = None
    id: str | None = None
    data: str = ""
    comment: str | None = None

    def json(self) -> Any:
        import json

        return json.loads(self.data)


def sse_messages(response: httpx.Response) -> Iterator[SseMessage]:
    """The messages of an event stream, as the EventSource spec parses them, comments included."""
    message = SseMessage()
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield SseMessage(comment=line[1:].strip())
            continue
        if not line:
            if data or message.event is not None:
                message.data = "\n".join(data)
                yield message
            message, data = SseMessage(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value


@dataclass
class Streamed:
    """What one ``GET /v1/tasks/{id}/stream`` gave: its status, the ``subscribed`` data, the events, the comments,
    and whether the server ended the stream (rather than the reader stopping)."""

    status_code: int
    subscribed: dict[str, Any] | None = None
    messages: list[SseMessage] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False
    content_type: str = ""
    body: str = ""  # the answer of a refused stream

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.messages]


def stream_task(
    base_url: str,
    task_id: str,
    *,
    key: str | None = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    until: Callable[[Streamed], bool] | None = None,
    timeout_s: float = 20.0,
) -> Streamed:
    """Follow a task's event stream until the server ends it, or ``until(streamed)`` says stop (checked after each
    message and comment). A read that waits more than ``timeout_s`` fails the test."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    timeout = httpx.Timeout(10.0, read=timeout_s)
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream("GET", f"/v1/tasks/{task_id}/stream", params=params, headers=sent) as response,
    ):
        streamed = Streamed(response.status_code, content_type=response.headers.get("content-type", ""))
        if response.status_code != 200:
            streamed.body = response.read().decode(errors="replace")
            return streamed
        for message in sse_messages(response):
            if message.comment is not None:
                streamed.comments.append(message.comment)
            elif message.event == "subscribed" and streamed.subscribed is None:
                streamed.subscribed = message.json()
            else:
                streamed.messages.append(message)
            if until is not None and until(streamed):
                return streamed
        streamed.ended = True
        return streamed
