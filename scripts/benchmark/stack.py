"""The processes of one bench run: started with their output in a log file, measured, stopped in reverse order;
what their logs complain of."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from service.processes import RedisServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
RELAY = str(VENV / "bin" / "relay")

# How long a process may take to come up.
STARTUP_TIMEOUT_S = 30.0
# How long a process may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
API_KEY = "bench-key"
ADMIN_TOKEN = "bench-admin"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
        return self.adopt(name, popen, log_path)

    def adopt(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> Service:
        """A process started elsewhere, measured and stopped with the rest."""
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
    def up() -> bool:
        if service.popen.poll() is not None:
            raise RuntimeError(f"{service.name} exited ({service.popen.returncode}):\n{service.log_tail()}")
        return ready()

    try:
        wait_for(up, timeout_s=STARTUP_TIMEOUT_S, message=what)
    except TimeoutError:
        raise RuntimeError(f"{service.name}: no {what} within {STARTUP_TIMEOUT_S:g} s:\n{service.log_tail()}") from None


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 -- our own 127.0.0.1 URL
            return bool(response.status == 200)
    except OSError:
        return False


def start_redis(stack: Stack) -> str:
    """Start a Redis of our own (no persistence) and point Relay's environment at it; return its URL."""
    server = RedisServer(
        data_dir=stack.workdir,
        appendonly=False,
        log_path=stack.workdir / "redis.log",
        new_session=True,  # keeps a terminal's Ctrl-C to us; we stop it last
        start_timeout_s=STARTUP_TIMEOUT_S,
    )
    stack.env.update(
        RELAY_REDIS_URL=server.url,
        RELAY_API_KEYS=f"bench={API_KEY}",
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_ALLOW_PRIVATE_CALLBACKS="true",
        RELAY_DATA_DIR=str(stack.workdir / "data"),
        # Every load generator connects from 127.0.0.1: the per-address cap on sockets and streams would refuse
        # all but the first hundred.
        RELAY_WS_MAX_PER_CLIENT="1000000",
    )
    stack.env.pop("RELAY_BROKER_URL", None)
    stack.env.pop("RELAY_SUBMIT_RATE", None)
    server.start()  # its StartError is a RuntimeError: the run fails and says where Redis's log is
    assert server.process is not None
    stack.adopt("redis", server.process, server.log_path)
    return server.url


def start_broker(stack: Stack) -> str:
    """Start a Redis for the task queue alone (``broker``, no persistence), beside the storage, and point Relay's
    environment at it; return its URL."""
    server = RedisServer(
        data_dir=stack.workdir / "broker",
        appendonly=False,
        log_path=stack.workdir / "broker.log",
        new_session=True,
        start_timeout_s=STARTUP_TIMEOUT_S,
    )
    server.start()
    assert server.process is not None
    stack.adopt("broker", server.process, server.log_path)
    stack.env["RELAY_BROKER_URL"] = server.url
    return server.url


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (uvicorn[standard] brings it), as the API runs on it too."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
