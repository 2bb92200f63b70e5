"""`relay serve` as a new user runs it: embedded Redis, printed dev credentials, Ctrl-C, a restart, relay.toml."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import ROOT, Api, Receiver, free_port, wait_until

STOP_WITHIN_S = 20.0


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def banner_value(self, label: str) -> str:
        match = re.search(rf"^\s*{label}:\s+(\S+)", self.output(), re.MULTILINE)
        assert match, f"no {label!r} in the output of relay serve:\n{self.output()}"
        return match.group(1)

    def ctrl_c(self) -> int:
        """SIGINT to the whole foreground process group, as a terminal does; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(STOP_WITHIN_S)


RunServe = Callable[..., Serve]


@pytest.fixture
def run_serve(tmp_path: Path) -> Iterator[RunServe]:
    """``run_serve(cwd, **RELAY_ENV)`` starts `relay serve` in ``cwd`` with no RELAY_* setting but those given."""
    started: list[Serve] = []

    def start(cwd: Path, **relay_env: str) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(relay_env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        port = free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "serve",
                    "--port",
                    str(port),
                    "--processes",
                    "1",
                    "--threads",
                    "4",
                ],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        serve = Serve(process, port, log)
        started.append(serve)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"relay serve exited ({process.returncode}):\n{serve.output()}")
            try:
                return httpx.get(serve.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout_s=40, interval_s=0.2, message="relay serve to answer /health")
        wait_until(
            lambda: "Worker process is ready for action" in serve.output(),
            timeout_s=30,
            message="the workers of relay serve",
        )
        return serve

    yield start
    for serve in started:  # a test that failed half-way must not leave Relay running
        if serve.process.poll() is None:
            os.killpg(serve.process.pid, signal.SIGINT)
            try:
                serve.process.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                os.killpg(serve.process.pid, signal.SIGKILL)
                serve.process.wait()


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def processes_with_env(entry: str) -> list[str]:
    """Command lines of running processes whose environment has ``entry`` (e.g. ``RELAY_DATA_DIR=/tmp/x``)."""
    found = []
    needle = entry.encode() + b"\0"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_serve_runs_everything_prints_credentials_stops_on_ctrl_c_and_keeps_tasks(
    run_serve: RunServe, tmp_path: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"RELAY_DATA_DIR": str(data_dir), "RELAY_ALLOW_PRIVATE_CALLBACKS": "true"}

    serve = run_serve(workdir, **env)
    key = serve.banner_value("dev API key")
    admin = serve.banner_value("admin token")
    redis_url = re.search(r"redis://127\.0\.0\.1:(\d+)", serve.output())
    assert redis_url, serve.output()
    redis_port = int(redis_url.group(1))
    assert key != admin
    assert accepts_connections(redis_port)
    # Redis, the API and the worker processes: what Ctrl-C must leave none of.
    assert len(processes_with_env(f"RELAY_DATA_DIR={data_dir}")) >= 3

    api = Api(serve.url)
    try:
        assert api.get("/ready", key=None).status_code == 200
        task = api.submit("echo", {"hello": "serve"}, webhook=receiver.url("/serve"), key=key)
        done = api.wait_task(task["id"], key=key)
        assert done["status"] == "succeeded"
        assert done["result"] == {"hello": "serve"}
        (hook,) = receiver.wait_for("/serve")
        secret = api.get("/v1/signing-secret", key=key).json()["secret"]
        assert Webhook(secret).verify(hook.body, hook.headers)["task_id"] == task["id"]
        assert api.get("/v1/dead-letters", key=admin).status_code == 200
        assert api.get("/v1/tasks/" + task["id"], key="not-the-key").status_code == 401
    finally:
        api.close()

    assert serve.ctrl_c() == 0
    assert not accepts_connections(serve.port)
    assert not accepts_connections(redis_port)
    assert processes_with_env(f"RELAY_DATA_DIR={data_dir}") == []

    again = run_serve(workdir, **env)
    assert again.banner_value("dev API key") == key
    assert again.banner_value("admin token") == admin
    api = Api(again.url)
    try:
        kept = api.task(task["id"], key=key)
        assert kept["status"] == "succeeded"
        assert kept["result"] == {"hello": "serve"}
        assert api.get("/v1/signing-secret", key=key).json()["secret"] == secret
    finally:
        api.close()
    assert again.ctrl_c() == 0
    assert processes_with_env(f"RELAY_DATA_DIR={data_dir}") == []


def test_serve_honours_relay_toml_in_the_working_directory(run_serve: RunServe, tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text("max_body_bytes = 2048\n")

    serve = run_serve(tmp_path)
    key = serve.banner_value("dev API key")
    api = Api(serve.url)
    try:
        small = api.post("/v1/tasks", json={"kind": "echo", "input": "x" * 1000}, key=key)
        large = api.post("/v1/tasks", json={"kind": "echo", "input": "x" * 4096}, key=key)
    finally:
        api.close()

    assert small.status_code == 202, small.text
    assert large.status_code == 413
    assert large.json()["detail"]
    assert (tmp_path / ".relay" / "credentials.json").is_file()  # RELAY_DATA_DIR defaults to ./.relay
    assert serve.ctrl_c() == 0
