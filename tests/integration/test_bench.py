"""`scripts/bench --webhooks` on a small run: Relay and the naive peer beside it both deliver every webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TASKS = 50


def run_bench(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "PEER_"))}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_relay_and_the_naive_peer_each_deliver_every_webhook_once_and_signed() -> None:
    result = run_bench("--webhooks", "-n", str(TASKS), "--no-bad-day", "--paced-s", "1")

    assert "error" not in result["peer"]
    for figures in (result["throughput"], result["peer"]["throughput"]):
        assert figures["accepted"] == TASKS
        assert (figures["delivered"], figures["missing"], figures["duplicates"]) == (TASKS, 0, 0)
        assert figures["not_succeeded"] == 0
        assert figures["signature"] == "ok"
        assert figures["cpu_us_per_task"]["service"] > 0
    # No webhook of the peer's failed and was retried (Dramatiq logs each retry as a warning).
    assert result["peer"]["logs"]["worker"]["counts"] == {}
