"""A kind that blocks its event loop (``time.sleep`` in an ``async def``), with real processes: other tenants' tasks
go on, its run keeps its lease and runs once, its time limit stops it; and runs given back at a stop."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from delivery import keys
from tests.integration.conftest import StartRelay
from tests.kinds_for_tests import BLOCK_TIME_LIMIT_S
from tests.support import Api, RelayProcess, wait_until

TEST_KINDS = "tests.kinds_for_tests"
# Another tenant's echo while a kind blocks: it ends within this (it took the whole block before).
ECHO_WITHIN_S = 3.0


def with_test_kinds(start_relay: StartRelay, *, processes: int = 1) -> tuple[Api, RelayProcess]:
    """An API and a worker that know the test kinds (``block`` among them)."""
    api = Api(start_relay("api", RELAY_TASK_MODULES=TEST_KINDS).url)
    worker = start_relay("worker", "--processes", str(processes), "--threads", "8", RELAY_TASK_MODULES=TEST_KINDS)
    return api, worker


def runs(runs_file: Path) -> int:
    return len(runs_file.read_text().splitlines()) if runs_file.exists() else 0


def echo_latencies(api: Api, count: int) -> list[float]:
    """Submit ``count`` echo tasks as another tenant, one after the other; how long each took to succeed."""
    took = []
    for n in range(count):
        started = time.monotonic()
        task = api.submit("echo", {"n": n}, key="key-globex")
        done = api.wait_task(task["id"], key="key-globex", timeout_s=30)
        took.append(time.monotonic() - started)
        assert done["status"] == "succeeded"
    return took


def final_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return [e for e in response.json()["events"] if e["type"] in ("task.completed", "task.failed", "task.cancelled")]


@pytest.mark.slow  # blocks a worker for 8 s
def test_another_tenants_task_is_not_held_up_by_a_kind_that_blocks_its_loop(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    api, worker = with_test_kinds(start_relay)
    runs_file = tmp_path / "runs"
    try:
        blocking = api.submit("block", {"seconds": 8, "runs_file": str(runs_file)})
        wait_until(lambda: runs(runs_file) == 1, message="the blocking kind to start")

        took = echo_latencies(api, 3)

        assert max(took) < ECHO_WITHIN_S, took
        done = api.wait_task(blocking["id"], timeout_s=30)
        assert (done["status"], done["result"], done["attempt"]) == ("succeeded", {"blocked": 8}, 1)
        assert runs(runs_file) == 1
        assert len(final_events(api, blocking["id"])) == 1
        # The operator sees which task held the loop, and for how long.
        log = worker.output()
        assert re.search(rf"kind loop \d+ has been held for [\d.]+ s by task {blocking['id']}", log), log[-3000:]
        wait_until(
            lambda: re.search(
                rf"answers again after being held for [\d.]+ s by task {blocking['id']}", worker.output()
            ),
            timeout_s=5,
        )
    finally:
        api.close()


@pytest.mark.slow  # blocks a worker for 4 s, four times over
def test_a_burst_of_blocking_tasks_and_another_tenants_echoes_submitted_together(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """Arriving together, they reach one kind loop in one turn: the blockers must not run one after the other on it
    with the echoes behind them (each echo took the sum of the blocks)."""
    api, _ = with_test_kinds(start_relay)
    runs_file = tmp_path / "runs"
    try:
        blockers, echoes = [], []
        started = time.monotonic()
        for n in range(4):
            blockers.append(api.submit("block", {"seconds": 4, "runs_file": str(runs_file)}))
            echoes.append(api.submit("echo", {"n": n}, key="key-globex"))
        echoed = [api.wait_task(e["id"], key="key-globex", timeout_s=30) for e in echoes]
        echoes_took_s = time.monotonic() - started
        ended = [api.wait_task(b["id"], timeout_s=30) for b in blockers]
        all_took_s = time.monotonic() - started

        assert [e["status"] for e in echoed] == ["succeeded"] * 4
        assert echoes_took_s < ECHO_WITHIN_S + 1, echoes_took_s  # one after the other: 16 s
        assert [b["status"] for b in ended] == ["succeeded"] * 4
        assert all_took_s < 12, all_took_s  # side by side (one loop each), not 16 s end to end
        assert runs(runs_file) == 4  # each ran once
        assert all(len(final_events(api, b["id"])) == 1 for b in blockers)
    finally:
        api.close()


@pytest.mark.slow  # blocks a worker for 18 s
def test_a_kind_blocking_past_its_lease_runs_once_with_two_worker_processes(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    # 18 s is past the 15 s lease: a blocked loop could not renew it, and the other process's sweeper ran the
    # task again (about 9 times in 3 minutes), blocking that process too.
    api, _ = with_test_kinds(start_relay, processes=2)
    runs_file = tmp_path / "runs"
    try:
        blocking = api.submit("block", {"seconds": 18, "runs_file": str(runs_file)})
        wait_until(lambda: runs(runs_file) == 1, message="the blocking kind to start")

        took = echo_latencies(api, 3)
        assert max(took) < ECHO_WITHIN_S, took
        time.sleep(12)  # past the lease, while it still blocks
        took += echo_latencies(api, 3)

        assert max(took) < ECHO_WITHIN_S, took
        done = api.wait_task(blocking["id"], timeout_s=30)
        assert (done["status"], done["attempt"]) == ("succeeded", 1)
        assert runs(runs_file) == 1
        assert len(final_events(api, blocking["id"])) == 1
    finally:
        api.close()


@pytest.mark.slow  # blocks a worker for 15 s
def test_a_kind_that_blocks_past_its_time_limit_ends_failed_once(start_relay: StartRelay, tmp_path: Path) -> None:
    api, worker = with_test_kinds(start_relay)
    runs_file = tmp_path / "runs"
    try:
        started = time.monotonic()
        blocking = api.submit("block_limited", {"seconds": 15, "runs_file": str(runs_file)})

        done = api.wait_task(blocking["id"], timeout_s=30)

        # Its limit, the grace a cancelled kind gets, and room for a loaded machine: well before the block ends.
        assert time.monotonic() - started < BLOCK_TIME_LIMIT_S + 6
        assert done["status"] == "failed"
        assert done["error"]["type"] == "TimeLimitExceeded"
        assert "blocks the event loop" in done["error"]["message"]
        assert echo_latencies(api, 2)[-1] < ECHO_WITHIN_S
        assert runs(runs_file) == 1
        assert len(final_events(api, blocking["id"])) == 1
        assert f"task {blocking['id']} (block_limited): its code did not stop" in worker.output()
    finally:
        api.close()


@pytest.mark.slow  # a worker stopped mid-run
@pytest.mark.parametrize("whom", ["supervisor", "group"])
def test_a_run_given_back_at_a_stop_shows_queued_and_reruns_as_the_next_attempt(
    start_relay: StartRelay, whom: str
) -> None:
    api = Api(start_relay("api").url)
    worker = start_relay("worker")
    try:
        task = api.submit("sleep", {"seconds": 60})
        wait_until(
            lambda: (t := api.task(task["id"]))["status"] == "running" and t["progress"] is not None,
            message="the task to run and report progress",
        )

        if whom == "group":
            # As systemd stops a service (and a shell its job): SIGTERM to every process at once, the supervisor's
            # own SIGTERM to each worker process following it.
            assert worker.process is not None
            os.killpg(worker.process.pid, signal.SIGTERM)
        assert worker.stop() == 0  # a clean stop: the run is cancelled after the grace and given back

        waiting = api.task(task["id"])
        assert (waiting["status"], waiting["progress"], waiting["attempt"]) == ("queued", None, 2)
        start_relay("worker")
        rerun = wait_until(
            lambda: (t := api.task(task["id"]))["status"] == "running" and t["progress"] is not None and t,
            message="the task to run again",
        )
        assert rerun["attempt"] == 2
        assert api.post(f"/v1/tasks/{task['id']}/cancel").status_code == 202
    finally:
        api.close()


@pytest.mark.slow  # a worker stopped while a kind blocks
def test_a_worker_stopped_while_a_kind_blocks_stops_in_time_and_gives_the_run_back(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    api, worker = with_test_kinds(start_relay)
    runs_file = tmp_path / "runs"
    try:
        blocking = api.submit("block", {"seconds": 60, "runs_file": str(runs_file)})
        wait_until(lambda: api.task(blocking["id"])["status"] == "running", message="the blocking kind to run")
        started = time.monotonic()

        assert worker.stop() == 0

        # The grace a running task gets (5 s), the one a cancelled kind gets (2 s), and room for a loaded machine.
        assert time.monotonic() - started < 12
        waiting = api.task(blocking["id"])
        assert (waiting["status"], waiting["attempt"]) == ("queued", 2)
        assert runs(runs_file) == 1
        assert api.post(f"/v1/tasks/{blocking['id']}/cancel").status_code == 202
    finally:
        api.close()


def _rewrite(client: redis.Redis, task_id: str, **fields: Any) -> None:
    key = keys.task(task_id)
    record = msgspec.json.decode(client.get(key))
    record.update(fields)
    client.set(key, msgspec.json.encode(record), keepttl=True)


@pytest.mark.slow  # starts an API and a worker for each case
@pytest.mark.parametrize(
    ("lost_before", "status", "attempt", "error"), [(0, "succeeded", 2, None), (3, "failed", 5, "RunsLost")]
)
def test_a_task_whose_run_died_reruns_as_the_next_attempt_a_bounded_number_of_times(
    start_relay: StartRelay, redis_url: str, lost_before: int, status: str, attempt: int, error: str | None
) -> None:
    api = Api(start_relay("api").url)
    client = redis.Redis.from_url(redis_url)
    try:
        task = api.submit("echo", {"hello": "again"})
        # As a worker that died mid-run leaves it: running, with its run's progress, its lease run out.
        _rewrite(
            client,
            task["id"],
            status="running",
            progress={"percent": 40.0, "message": "half way"},
            attempt=lost_before + 1,
            lost_runs=lost_before,
            died_runs=lost_before,
        )
        start_relay("worker")

        done = api.wait_task(task["id"])

        assert (done["status"], done["attempt"], done["progress"]) == (status, attempt, None)
        assert (done["error"] or {}).get("type") == error
    finally:
        client.close()
        api.close()
