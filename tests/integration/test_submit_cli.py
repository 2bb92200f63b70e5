"""`relay submit --wait` follows a task over the WebSocket, across a restart of the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import Relay
from tests.support import ROOT, wait_until


def _submit(relay: Relay, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RELAY_API_KEY": "key-acme"}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "submit", *args, "--url", relay.api.url, "--wait", "--timeout", "60"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_submit_wait_prints_progress_and_the_result(relay: Relay) -> None:
    process = _submit(relay, "sleep", "--input", '{"seconds": 1.5}')
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert json.loads(out) == {"slept": 1.5}
    assert "100.0%" in err
    assert "polling instead" not in err  # it followed over the socket


def test_submit_wait_exits_1_when_the_task_fails(relay: Relay) -> None:
    process = _submit(relay, "fail", "--input", '{"message": "no luck"}')
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert json.loads(out)["message"] == "no luck"
    assert "failed: no luck" in err


@pytest.mark.slow  # a restart: a fault test
def test_submit_wait_resumes_after_the_api_restarts(relay: Relay) -> None:
    process = _submit(relay, "sleep", "--input", '{"seconds": 5}')
    assert process.stderr is not None
    wait_until(lambda: "task_" in process.stderr.readline(), timeout_s=20, message="the task to be submitted")
    relay.api.kill()
    relay.api.start()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert json.loads(out) == {"slept": 5.0}
