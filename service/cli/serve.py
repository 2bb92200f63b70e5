"""``relay serve``: Redis (embedded unless RELAY_REDIS_URL is set), the API and the workers, stopped together."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import msgspec
import rich

from service.cli.embedded_redis import EmbeddedRedis
from service.settings import Settings

# Children get this long to stop after SIGTERM before they are killed.
STOP_TIMEOUT_S = 15.0
DEV_TENANT = "dev"


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


def serve(settings: Settings, *, host: str, port: int, processes: int, threads: int) -> int:
    data_dir = Path(settings.data_dir)
    embedded: EmbeddedRedis | None = None
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        changes: dict[str, object] = {}
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
        names = ["api", "worker"]
        children.append(
            subprocess.Popen([*relay, "api", "--host", host, "--port", str(port)], env=env, start_new_session=True)
        )
        children.append(
            subprocess.Popen(
                [*relay, "worker", "--processes", str(processes), "--threads", str(threads)],
                env=env,
                start_new_session=True,
            )
        )
        _banner(settings, host=host, port=port, embedded=embedded, creds=creds)
        while not stopping:
            for name, child in zip(names, children, strict=True):
                if child.poll() is not None:
                    rich.print(f"[red]relay: the {name} process exited (status {child.returncode}); stopping[/red]")
                    stopping = True
            time.sleep(0.2)
        return 0
    finally:
        rich.print("relay: stopping…", file=sys.stderr)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if embedded is not None:
            embedded.stop()
        rich.print("relay: stopped", file=sys.stderr)


def _example_key(settings: Settings, creds: dict[str, str] | None) -> str:
    """The key to show in the example: the generated dev key, else a placeholder (a configured key is not shown)."""
    if creds is not None and settings.api_keys.get(creds["api_key"]) == DEV_TENANT:
        return creds["api_key"]
    return "<your API key>"


def _banner(
    settings: Settings, *, host: str, port: int, embedded: EmbeddedRedis | None, creds: dict[str, str] | None
) -> None:
    url = f"http://{host}:{port}"
    lines = [f"Relay is starting at {url}  (Ctrl-C stops everything)"]
    if embedded is not None:
        lines.append(f"  Redis:        embedded, {embedded.url}, data in {embedded.dir}")
    else:
        lines.append("  Redis:        RELAY_REDIS_URL")
    if creds is not None:
        if settings.api_keys.get(creds["api_key"]) == DEV_TENANT:
            lines.append(f"  dev API key:  {creds['api_key']}   (tenant '{DEV_TENANT}')")
        if settings.admin_token == creds["admin_token"]:
            lines.append(f"  admin token:  {creds['admin_token']}")
        lines.append(f"  (kept in {Path(settings.data_dir) / 'credentials.json'})")
    lines.append(
        f"  try:          curl -s -X POST {url}/v1/tasks -H 'Authorization: Bearer {_example_key(settings, creds)}' "
        '-H \'content-type: application/json\' -d \'{"kind": "echo", "input": {"hello": 1}}\''
    )
    key = _example_key(settings, creds)
    # The key rides in the URL fragment, which the browser never sends to the server.
    demo = f"{url}/#key={key}" if not key.startswith("<") else f"{url}/"
    lines.append(f"  demo page:    {demo}")
    lines.append(f"  API docs:     {url}/schema/swagger")
    # Plain print: rich would wrap the curl line, and it must stay copy-pasteable.
    print("\n".join(lines), flush=True)
