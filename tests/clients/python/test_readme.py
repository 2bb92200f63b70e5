"""The READMEs' Python as written: the top README's example run against a real Relay, the client README's quick
start and Litestar receiver run, its other receivers and snippets compiled."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from litestar.testing import TestClient
from relay_client import Relay

from tests.clients.python.conftest import TENANT_KEY
from tests.integration.conftest import Relay as RelayProcesses
from tests.support import ROOT, Receiver

pytestmark = pytest.mark.integration

CLIENT_README = ROOT / "clients" / "python" / "README.md"


def python_blocks(path: Path, *, after: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown file (of the section whose heading is ``after``, when given)."""
    text = path.read_text()
    if after is not None:
        start = text.index(f"\n## {after}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def run(code: str, shared: RelayProcesses, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "RELAY_URL": shared.api.url, "RELAY_API_KEY": TENANT_KEY, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readmes_python_example_runs_as_written(shared: RelayProcesses) -> None:
    (example,) = python_blocks(ROOT / "README.md", after="Use it from your code")

    ran = run(example, shared)

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "succeeded {'hello': 'world'}"
    assert lines[-1].endswith("task.completed")


def test_the_client_readmes_quick_start_runs_as_written(shared: RelayProcesses) -> None:
    quick_start = python_blocks(CLIENT_README, after="Quick start")[0]

    ran = run(quick_start, shared)

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "task.progress" in lines[0]
    assert "task.completed" in lines[-2]
    assert lines[-1] == "succeeded"  # as the README says: a status is a string (a StrEnum)


def test_the_client_readmes_async_example_runs_as_written_with_a_webhook_and_without(
    shared: RelayProcesses, receiver: Receiver
) -> None:
    async_block = python_blocks(CLIENT_README, after="Quick start")[1]

    with_webhook = run(async_block, shared, RELAY_WEBHOOK_URL=receiver.url("/async-readme"))
    without = run(async_block, shared)

    for ran in (with_webhook, without):
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines()[0] == "{'n': 1}"
    (webhook,) = receiver.wait_for("/async-readme")
    assert b'"type":"task.completed"' in webhook.body


def test_the_litestar_receiver_takes_a_real_webhook_and_refuses_a_forged_one(
    shared: RelayProcesses, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    litestar_block, *_ = python_blocks(CLIENT_README, after="Receiving webhooks")
    with Relay(shared.api.url, TENANT_KEY) as relay:
        monkeypatch.setenv("RELAY_WEBHOOK_SECRET", relay.signing_secret.get())
        task = relay.tasks.submit("echo", {"order": 7}, webhook=receiver.url("/readme"))
    (webhook,) = receiver.wait_for("/readme")
    root_handlers = list(logging.root.handlers)
    module = ModuleType("readme_receiver")  # Litestar reads a handler's annotations in its module
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(litestar_block, "README.md (Litestar)", "exec"), module.__dict__)  # noqa: S102 -- the README's code

    try:
        with TestClient(module.app) as client:
            delivered = client.post("/relay-webhook", content=webhook.body, headers=webhook.headers)
            again = client.post("/relay-webhook", content=webhook.body, headers=webhook.headers)
            forged = client.post("/relay-webhook", content=webhook.body.replace(b"7", b"8"), headers=webhook.headers)
    finally:
        _undo_logging_of(root_handlers)

    assert (delivered.status_code, again.status_code, forged.status_code) == (204, 204, 400)
    assert capsys.readouterr().out.count(f"task.completed {task.id}") == 1  # the repeat was deduplicated


def _undo_logging_of(root_handlers: list[logging.Handler]) -> None:
    """Take back the root handler a Litestar app adds (a queue whose thread writes to the stderr of its time): left
    in place, the next tests' log lines go to a stream pytest has closed. Its thread, idle from then on, is stopped
    at exit, as Litestar registered it."""
    for handler in list(logging.root.handlers):
        if handler not in root_handlers:
            logging.root.removeHandler(handler)


def test_every_other_python_block_of_the_client_readme_compiles() -> None:
    blocks = python_blocks(CLIENT_README)
    assert len(blocks) == 6
    for n, block in enumerate(blocks):
        compile(block, f"clients/python/README.md block {n + 1}", "exec")
