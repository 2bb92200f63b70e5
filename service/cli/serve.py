"""``relay serve``: Redis (embedded unless RELAY_REDIS_URL is set), the API and the workers, stopped together.

Ctrl-C (or SIGTERM) stops everything: one SIGTERM to the API and to the workers, which stop cleanly (a task
still running after a short grace is given back and runs again at the next start), then the embedded Redis.
Whatever is still alive 15 s later is killed, and a second Ctrl-C kills at once. Output to a closed pipe
(``relay serve | tee log`` when ``tee`` has gone) never stops the shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx
import msgspec
import psutil  # type: ignore[import-untyped]

from delivery.errors import ConfigError
from service.cli.embedded_redis import EmbeddedRedis
from service.settings import Settings

# Children get this long to stop after SIGTERM before they are killed.
STOP_TIMEOUT_S = 15.0
# How long the API may take to answer /health after it was started.
START_TIMEOUT_S = 60.0
POLL_S = 0.05
# An embedded Redis that dies sooner than this after it started is not started again (it would only die again).
REDIS_HEALTHY_AFTER_S = 10.0
DEV_TENANT = "dev"
LOCK_FILE = "serve.lock"


def dev_credentials(data_dir: Path) -> dict[str, str]:
    """The dev tenant's API key and the admin token, made once and kept in RELAY_DATA_DIR."""
    path = data_dir / "credentials.json"
    if path.is_file():
        stored: dict[str, str] = json.loads(path.read_text())
        if stored.get("api_key") and stored.get("admin_token"):
            return stored
    creds = {"api_key": "rk_dev_" + secrets.token_urlsafe(24), "admin_token": "adm_" + secrets.token_urlsafe(24)}
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh)
    return creds


def say(text: str, *, err: bool = False) -> None:
    """Print a line; when the reader has gone (a closed pipe), say nothing more rather than fail."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except (BrokenPipeError, ValueError, OSError):
        # Point the stream at /dev/null so that neither this nor the interpreter's exit flush fails again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


class DataDirLock:
    """An exclusive lock on ``RELAY_DATA_DIR`` for as long as one ``relay serve`` uses it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(
                f"another relay serve{by} is using {self.path.parent}; stop it first, "
                "or give this one its own RELAY_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def check_port(host: str, port: int) -> None:
    """Fail before anything starts when ``host:port`` cannot be listened on, saying what holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}){_holder(port)}; "
                "stop it, or pick another port with --port"
            ) from None


def _holder(port: int) -> str:
    """`` held by pid N (command)`` for the process listening on ``port``, when this user may see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                command = " ".join(" ".join(psutil.Process(conn.pid).cmdline()).split())[:120]
                return f": held by pid {conn.pid} ({command})"
    except (psutil.Error, OSError):
        pass
    return ""


def serve(
    settings: Settings, *, host: str, port: int, processes: int, threads: int, allow_private: bool = False
) -> int:
    """Run everything until Ctrl-C or SIGTERM; the exit status (1 when a part of it failed)."""
    data_dir = Path(settings.data_dir)
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        check_port(host, port)
    except ConfigError:
        lock.release()
        raise
    embedded: EmbeddedRedis | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        changes: dict[str, object] = {}
        if allow_private:
            changes["allow_private_callbacks"] = True
        if settings.redis_url is None:
            embedded = EmbeddedRedis(data_dir=data_dir)
            embedded.start()
            changes["redis_url"] = embedded.url
        creds = None
        if not settings.api_keys or settings.admin_token is None:
            creds = dev_credentials(data_dir)
            if not settings.api_keys:
                changes["api_keys"] = {creds["api_key"]: DEV_TENANT}
            if settings.admin_token is None:
                changes["admin_token"] = creds["admin_token"]
        settings = msgspec.structs.replace(settings, **changes)
        env = {**os.environ, **settings.to_env()}
        relay = [sys.executable, "-m", "service.cli"]
        # Each child leads a process group of its own: Ctrl-C reaches serve alone, and serve stops them in order.
        children["API"] = subprocess.Popen(
            [*relay, "api", "--host", host, "--port", str(port)], env=env, start_new_session=True
        )
        children["worker"] = subprocess.Popen(
            [*relay, "worker", "--processes", str(processes), "--threads", str(threads)],
            env=env,
            start_new_session=True,
        )
        if not _wait_for_api(_local_url(host, port), children, lambda: signals > 0):
            return 1 if not signals else 0
        _banner(settings, host=host, port=port, embedded=embedded, creds=creds)
        restarted_at = -math.inf  # when serve last started Redis again: the first death is always worth a restart
        while not signals:
            for name, child in children.items():
                if child.poll() is not None:
                    say(f"relay: the {name} process exited (status {child.returncode}); stopping", err=True)
                    code = 1
                    signals = 1
            if not signals and embedded is not None and not embedded.running:
                if not _restart_redis(embedded, lived_s=time.monotonic() - restarted_at):
                    code = signals = 1
                restarted_at = time.monotonic()
            time.sleep(POLL_S * 4)
        return code
    finally:
        say("relay: stopping… (Ctrl-C again to kill at once)", err=True)
        _stop(children, forced=lambda: signals > 1)
        if embedded is not None:
            embedded.stop()
        lock.release()
        say("relay: stopped", err=True)


def _restart_redis(embedded: EmbeddedRedis, *, lived_s: float) -> bool:
    """Start the embedded Redis again after it died (killed, out of memory), on the same port and append-only file:
    the API and the workers answer 503 and retry meanwhile, and nothing accepted is lost. False, having said why, when
    it cannot start or dies again within ``REDIS_HEALTHY_AFTER_S`` of its restart (``lived_s``): then serve stops."""
    status = embedded.process.returncode if embedded.process is not None else None
    if lived_s < REDIS_HEALTHY_AFTER_S:
        say(
            f"relay: the embedded Redis exited again (status {status}) {lived_s:.0f} s after it started; stopping",
            err=True,
        )
        return False
    say(f"relay: the embedded Redis exited (status {status}); starting it again on the same data", err=True)
    try:
        embedded.start()
    except ConfigError as exc:
        say(f"relay: {exc}; stopping", err=True)
        return False
    say("relay: the embedded Redis is back; the owed work goes on", err=True)
    return True


def _local_url(host: str, port: int) -> str:
    local = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    if ":" in local and not local.startswith("["):
        local = f"[{local}]"
    return f"http://{local}:{port}"


def _wait_for_api(url: str, children: dict[str, subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> bool:
    """Wait until the API answers /health; False when a child exits first, or a signal comes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if stopping():
                return False
            for name, child in children.items():
                if child.poll() is not None:
                    say(f"relay: the {name} process exited at start (status {child.returncode}); see above", err=True)
                    return False
            try:
                if client.get(url + "/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S * 2)
    say(f"relay: the API did not answer within {START_TIMEOUT_S:g} s", err=True)
    return False


def _stop(children: dict[str, subprocess.Popen[bytes]], *, forced: Callable[[], bool]) -> None:
    """SIGTERM each child once, wait for each whole process group; SIGKILL at the deadline or when forced."""
    for child in children.values():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, child in children.items():
        while _group_alive(child):
            child.poll()  # reap the leader, so that its group can empty
            if forced() or time.monotonic() > deadline:
                if not forced():
                    say(f"relay: the {name} process did not stop within {STOP_TIMEOUT_S:g} s; killing it", err=True)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                break
            time.sleep(POLL_S)


def _group_alive(child: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the group ``child`` leads is still alive (zombies of our own included)."""
    if child.poll() is None:
        return True
    try:
        os.killpg(child.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _example_key(settings: Settings, creds: dict[str, str] | None) -> str | None:
    """The generated dev key, to show in the examples (a configured key is never printed)."""
    if creds is not None and settings.api_keys.get(creds["api_key"]) == DEV_TENANT:
        return creds["api_key"]
    return None


def _banner(
    settings: Settings, *, host: str, port: int, embedded: EmbeddedRedis | None, creds: dict[str, str] | None
) -> None:
    url = _local_url(host, port)
    key = _example_key(settings, creds)
    admin = creds["admin_token"] if creds is not None and settings.admin_token == creds["admin_token"] else None
    lines = [f"Relay is running at {url}  (Ctrl-C stops everything)"]
    if embedded is not None:
        lines.append(f"  Redis:        embedded, {embedded.url}, data in {embedded.dir}")
    else:
        lines.append("  Redis:        RELAY_REDIS_URL")
    if key is not None:
        lines.append(f"  dev API key:  {key}   (tenant '{DEV_TENANT}')")
    if admin is not None:
        lines.append(f"  admin token:  {admin}")
    if creds is not None:
        lines.append(f"  (kept in {Path(settings.data_dir) / 'credentials.json'})")
    if settings.allow_private_callbacks:
        lines.append(
            "  callbacks:    loopback and private addresses allowed (development only); "
            "a receiver on this machine: relay receive --port 9000"
        )
    else:
        lines.append(
            "  callbacks:    public addresses only; for a receiver on this machine, start with "
            "--allow-private-callbacks (development only)"
        )
    exports = [f"RELAY_URL={url}"]
    if key is not None:
        exports.append(f"RELAY_API_KEY={key}")
    if admin is not None:
        exports.append(f"RELAY_ADMIN_TOKEN={admin}")
    lines.append(f"  shell:        export {' '.join(exports)}")
    lines.append(
        f"  try:          curl -s -X POST {url}/v1/tasks -H 'Authorization: Bearer {key or '<your API key>'}' "
        '-H \'content-type: application/json\' -d \'{"kind": "echo", "input": {"hello": 1}}\''
    )
    # The key rides in the URL fragment, which the browser never sends to the server.
    lines.append(f"  demo page:    {url}/#key={key}" if key is not None else f"  demo page:    {url}/")
    lines.append(
        f"  console:      {url}/console#token={admin}" if admin is not None else f"  console:      {url}/console"
    )
    lines.append(f"  API docs:     {url}/schema/swagger")
    # Plain print: a wrapped curl line would not paste.
    say("\n".join(lines))
