"""`scripts/bench --webhooks` on a small run: Relay and the naive peer beside it both deliver every webhook once,
signed, and every figure the report prints is there and sane (counts that add up, latencies in order, CPU
measured for each of the service's processes)."""

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


def assert_latencies_sane(figures: dict[str, Any]) -> None:
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"] < 120_000, figures


def assert_run_counted(figures: dict[str, Any]) -> None:
    """A closed-loop throughput run: every task accepted, succeeded and delivered once, signed, and measured."""
    assert figures["accepted"] == figures["tasks"] == TASKS
    assert figures["submit_errors"] == {}
    assert (figures["delivered"], figures["missing"], figures["duplicates"]) == (TASKS, 0, 0)
    assert figures["missing_sample"] == []
    assert figures["not_succeeded"] == 0
    assert figures["signature"] == "ok"
    assert figures["seconds"] > 0
    assert figures["submit_per_s"] > 0
    assert figures["end_to_end_per_s"] > 0
    assert_latencies_sane(figures)
    cpu = figures["cpu_us_per_task"]
    # The API and the worker were measured doing the work. Redis's share of a short run can be less than one
    # tick of the process clock (10 ms: 50 tasks at ~200 µs each), so it is only never negative.
    assert cpu["api"] > 0, cpu
    assert cpu["worker"] > 0, cpu
    assert cpu["redis"] >= 0, cpu
    assert abs(cpu["service"] - (cpu["api"] + cpu["worker"] + cpu["redis"])) <= 2, cpu
    assert figures["redis_calls_per_task"], "Redis's command counts were not read"


def test_relay_and_the_naive_peer_each_deliver_every_webhook_once_and_signed() -> None:
    result = run_bench("--webhooks", "-n", str(TASKS), "--no-bad-day", "--paced-s", "1")

    assert result["config"]["tasks"] == TASKS
    ceiling = result["ceiling"]  # the receiver and client alone: every request answered and counted
    assert ceiling["ok"] == ceiling["received"] == ceiling["requests"] > 0
    assert ceiling["req_per_s"] > 0
    assert_run_counted(result["throughput"])
    paced = result["paced"]  # the open loop at half the end-to-end rate
    assert paced["rate_per_s"] >= 1
    assert paced["accepted"] == paced["tasks"] == paced["delivered"] > 0
    assert (paced["missing"], paced["submit_errors"]) == (0, {})
    assert_latencies_sane(paced)

    assert "error" not in result["peer"]
    assert_run_counted(result["peer"]["throughput"])
    # No webhook of the peer's failed and was retried (Dramatiq logs each retry as a warning).
    assert result["peer"]["logs"]["worker"]["counts"] == {}
