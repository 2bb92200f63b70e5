"""`relay serve` as a new user runs it: embedded Redis, printed dev credentials, Ctrl-C, a restart, relay.toml."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import ROOT, Api, Receiver, free_port, wait_until

# Every child must be gone this soon after Ctrl-C (serve kills what is left after 15 s).
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

    def start(cwd: Path, *args: str, wait: bool = True, port: int | None = None, **relay_env: str) -> Serve:
        env = serve_env(**relay_env)
        port = port or free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*SERVE, "--port", str(port), *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        serve = Serve(process, port, log)
        started.append(serve)
        if not wait:
            return serve

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
        # The banner comes once serve has seen its parts ready, a moment after /health answers.
        wait_until(lambda: "Relay is running" in serve.output(), timeout_s=15, message="the banner of relay serve")
        return serve

    yield start
    stuck = []
    for serve in started:  # a test that failed half-way must not leave Relay running
        if serve.process.poll() is None:
            os.killpg(serve.process.pid, signal.SIGINT)
            try:
                serve.process.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                stuck.append(serve.output()[-3000:])
                os.killpg(serve.process.pid, signal.SIGKILL)
                serve.process.wait()
    # What a user would find after Ctrl-C: a stuck serve fails the test rather than being killed quietly.
    assert not stuck, "relay serve did not stop on Ctrl-C:\n" + "\n---\n".join(stuck)


SERVE = [sys.executable, "-m", "service.cli", "serve", "--processes", "1", "--threads", "4"]


def serve_env(**relay_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(relay_env, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


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


@pytest.mark.slow  # relay serve twice (12 s): the banner test keeps serve in the quick run
def test_serve_runs_everything_prints_credentials_stops_on_ctrl_c_and_keeps_tasks(
    run_serve: RunServe, tmp_path: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"RELAY_DATA_DIR": str(data_dir)}

    serve = run_serve(workdir, "--allow-private-callbacks", **env)  # the receiver is on loopback
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

    again = run_serve(workdir, "--allow-private-callbacks", **env)
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


@pytest.mark.slow  # another relay serve
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


def banner_exports(serve: Serve) -> dict[str, str]:
    match = re.search(r"^\s*shell:\s+export (.+)$", serve.output(), re.MULTILINE)
    assert match, serve.output()
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def test_the_banner_gives_an_export_line_for_the_client_commands(run_serve: RunServe, tmp_path: Path) -> None:
    serve = run_serve(tmp_path, RELAY_DATA_DIR=str(tmp_path / "data"))
    exports = banner_exports(serve)

    assert exports == {
        "RELAY_URL": serve.url,
        "RELAY_API_KEY": serve.banner_value("dev API key"),
        "RELAY_ADMIN_TOKEN": serve.banner_value("admin token"),
    }
    # Loopback callbacks are refused here: the banner says how a receiver on this machine is allowed.
    assert re.search(r"^\s*callbacks:\s+public addresses only.*--allow-private-callbacks", serve.output(), re.M)
    # What the export line sets is all `relay dlq list` needs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | exports
    listed = subprocess.run(
        [sys.executable, "-m", "service.cli", "dlq", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert "No dead letters." in listed.stdout
    assert serve.ctrl_c() == 0


@pytest.mark.slow  # a closed pipe: a fault test
def test_ctrl_c_stops_everything_when_the_output_pipe_has_closed(tmp_path: Path) -> None:
    """`relay serve | tee log`, then Ctrl-C: tee goes first, and serve must still stop every child."""
    data_dir = tmp_path / "data"
    port = free_port()
    process = subprocess.Popen(
        [*SERVE, "--port", str(port)],
        cwd=tmp_path,
        env=serve_env(RELAY_DATA_DIR=str(data_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen = b""
        while b"Worker process is ready for action" not in seen or b"Relay is running" not in seen:
            line = process.stdout.readline()
            assert line, f"relay serve ended before it was ready:\n{seen.decode(errors='replace')}"
            seen += line
        assert len(processes_with_env(f"RELAY_DATA_DIR={data_dir}")) >= 3
        process.stdout.close()  # the reader (tee) has gone: every later write meets a closed pipe

        os.killpg(process.pid, signal.SIGINT)
        process.wait(STOP_WITHIN_S)
        wait_until(
            lambda: processes_with_env(f"RELAY_DATA_DIR={data_dir}") == [],
            timeout_s=5,
            message="no process of relay serve left",
        )
        assert not accepts_connections(port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow  # a restart: a fault test
def test_ctrl_c_with_a_task_running_stops_within_15_s_and_the_task_runs_again_at_the_next_start(
    run_serve: RunServe, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = run_serve(tmp_path, RELAY_DATA_DIR=str(data_dir))
    key = serve.banner_value("dev API key")
    api = Api(serve.url)
    try:
        task = api.submit("sleep", {"seconds": 8}, key=key)
        wait_until(lambda: api.task(task["id"], key=key)["status"] == "running", message="the task to run")
    finally:
        api.close()

    assert serve.ctrl_c() == 0  # within STOP_WITHIN_S, or ctrl_c fails
    assert processes_with_env(f"RELAY_DATA_DIR={data_dir}") == []
    assert "cancelled and will run again" in serve.output()

    again = run_serve(tmp_path, RELAY_DATA_DIR=str(data_dir))
    api = Api(again.url)
    try:
        done = api.wait_task(task["id"], key=key, timeout_s=40)
        assert done["status"] == "succeeded"
        assert done["result"] == {"slept": 8}
    finally:
        api.close()
    assert again.ctrl_c() == 0


@pytest.mark.slow  # a stop under way: a fault test
def test_a_second_ctrl_c_stops_at_once(run_serve: RunServe, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve = run_serve(tmp_path, RELAY_DATA_DIR=str(data_dir))
    key = serve.banner_value("dev API key")
    api = Api(serve.url)
    try:
        task = api.submit("sleep", {"seconds": 60}, key=key)
        wait_until(lambda: api.task(task["id"], key=key)["status"] == "running", message="the task to run")
    finally:
        api.close()

    os.killpg(serve.process.pid, signal.SIGINT)
    wait_until(lambda: "stopping" in serve.output(), message="serve to begin stopping")
    os.killpg(serve.process.pid, signal.SIGINT)
    # Well before the 5 s grace a running task gets: the second Ctrl-C did not wait for it.
    serve.process.wait(4)
    wait_until(lambda: processes_with_env(f"RELAY_DATA_DIR={data_dir}") == [], timeout_s=3, message="no process left")


def test_a_port_in_use_is_refused_before_anything_starts(run_serve: RunServe, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        serve = run_serve(tmp_path, wait=False, port=port, RELAY_DATA_DIR=str(tmp_path / "data"))
        code = serve.process.wait(30)

    assert code != 0
    out = serve.output()
    assert f"127.0.0.1:{port}" in out
    assert "in use" in out
    assert f"pid {os.getpid()}" in out  # what holds it
    assert "Relay is running" not in out
    assert "curl" not in out


@pytest.mark.slow  # two relay serves
def test_a_second_serve_on_the_same_data_dir_is_refused(run_serve: RunServe, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = run_serve(tmp_path, RELAY_DATA_DIR=str(data_dir))

    second = run_serve(tmp_path, wait=False, RELAY_DATA_DIR=str(data_dir))
    code = second.process.wait(30)

    assert code != 0
    assert f"another relay serve (pid {first.process.pid}) is using" in second.output()
    assert "Relay is running" not in second.output()
    assert httpx.get(first.url + "/ready", timeout=5).status_code == 200  # the first one is untouched
    assert first.ctrl_c() == 0


def readme_first_example() -> tuple[list[str], str]:
    """The README's first example as a user pastes it: its `relay receive` command and its curl command."""
    blocks = (ROOT / "README.md").read_text().split("```console\n")[1:]
    block = next(b.split("```", 1)[0] for b in blocks if "$ relay receive" in b)
    commands: list[str] = []
    continued = False
    for line in block.splitlines():
        if line.startswith("$ ") or continued:
            text = line.removeprefix("$ ")
            commands[-1:] = [commands[-1] + "\n" + text] if continued else [*commands[-1:], text]
            continued = line.endswith("\\")
    receive = next(shlex.split(c, comments=True) for c in commands if c.startswith("relay receive"))
    curl = next(c for c in commands if c.startswith("curl "))
    return [a for a in receive if a != "&"], curl


@pytest.mark.slow  # relay serve and a receiver of its own
def test_the_readmes_first_example_works_as_pasted(run_serve: RunServe, tmp_path: Path) -> None:
    serve = run_serve(tmp_path, "--allow-private-callbacks", RELAY_DATA_DIR=str(tmp_path / "data"))
    assert "a receiver on this machine: relay receive --port 9000" in serve.output()
    receive, curl = readme_first_example()
    assert "http://127.0.0.1:9000/" in curl
    assert receive[:2] == ["relay", "receive"]
    port = str(free_port())  # the README's 9000 may be taken on this machine
    env = serve_env() | banner_exports(serve)
    log = tmp_path / "receive.log"
    with log.open("wb") as out:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *[port if a == "9000" else a for a in receive[1:]]],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Receiving webhooks at" in log.read_text(), message="relay receive to listen")
        posted = subprocess.run(
            ["bash", "-c", curl.replace(":9000/", f":{port}/")], env=env, capture_output=True, text=True, timeout=30
        )
        task_id = json.loads(posted.stdout)["id"]
        line = wait_until(
            lambda: next((x for x in log.read_text().splitlines() if task_id in x), None),
            message="the webhook printed by relay receive",
        )
        assert "task.completed" in line
        assert "signature ok" in line
        assert '"hello":"world"' in line
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.wait(10)
    assert receiver.returncode == 0, log.read_text()
    assert serve.ctrl_c() == 0


@pytest.mark.slow  # Redis killed: a fault test
def test_an_embedded_redis_that_dies_is_started_again_and_every_accepted_task_ends_delivered(
    run_serve: RunServe, tmp_path: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    serve = run_serve(tmp_path, "--allow-private-callbacks", RELAY_DATA_DIR=str(data_dir))
    key = serve.banner_value("dev API key")
    api = Api(serve.url)
    try:
        accepted = [api.submit("sleep", {"seconds": 2}, webhook=receiver.url(), key=key)["id"] for _ in range(10)]
        time.sleep(1.5)  # past the append-only file's fsync (every second): what follows is on disk
        # Redis runs in its data directory (its --dir), which tells serve's from every other on the machine.
        redis_dir = str((data_dir / "redis").resolve())
        (redis,) = [p for p in psutil.process_iter(["name", "cwd"]) if p.info["cwd"] == redis_dir]
        redis.kill()
        wait_until(lambda: "the embedded Redis is back" in serve.output(), timeout_s=30, message="Redis started again")
        accepted += [api.submit("echo", n, webhook=receiver.url(), key=key)["id"] for n in range(10)]

        ended = [api.wait_task(task_id, key=key, timeout_s=60) for task_id in accepted]
        hooks = receiver.wait_for("/hook", len(accepted), timeout_s=60)
        delivered = [json.loads(hook.body)["task_id"] for hook in hooks]
        print(
            f"accepted {len(accepted)}, succeeded {sum(t['status'] == 'succeeded' for t in ended)}, "
            f"webhooks {len(delivered)} for {len(set(delivered))} tasks"
        )
        assert [t["status"] for t in ended] == ["succeeded"] * len(accepted)
        assert sorted(set(delivered)) == sorted(accepted)  # none lost (a repeat of one sent at the kill may come)
        assert "the embedded Redis exited (status -9); starting it again on the same data" in serve.output()
    finally:
        api.close()
    assert serve.ctrl_c() == 0
