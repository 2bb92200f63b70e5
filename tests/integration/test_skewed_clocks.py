"""Hosts whose clocks disagree, with real processes: the API's wall clock 30 s ahead, one worker's 30 s behind and
another's 45 s ahead (each well past the 15 s grace a task has before it is enqueued again, and unequal, so that
no two skews cancel out). Every time a step compares is Redis's, so: nothing runs twice, scheduled work runs
neither early nor late, a retried task and a failing webhook keep their schedules, no webhook reaches its
receiver twice, nothing is lost.

Each process's clock is skewed by libfaketime, preloaded into it (the ``libfaketime`` package ships the library):
every wall-clock read of the process (``time.time``, ``datetime.now``, and whatever else calls ``clock_gettime``
or ``gettimeofday``), its worker children's too. Its monotonic clock is left alone: the kind under test stamps
its runs with it, which is the machine's one clock, the test's too.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections import Counter, defaultdict
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StartRelay
from tests.support import Api, Receiver, wait_until

API_AHEAD_S = 30
WORKER_BEHIND_S = -30
WORKER_AHEAD_S = 45
SCHEDULED_DELAY_S = 4.0
TASK_RETRY_DELAY_S = 3.0
WEBHOOK_RETRY_S = 2.0  # each retry of a failing webhook waits this long (the jitter is 10 %)
RECEIVER_HOLD_S = 1.0  # the receiver holds every request this long: a lease seen as expired would be sent twice
# Late by at most this much: polling (the sweep runs every second or so), never a clock's skew.
LATE_S = 5.0


def skewed(offset_s: int) -> dict[str, str]:
    """A child environment whose wall clock runs ``offset_s`` off the machine's (see above)."""
    spec = importlib.util.find_spec("libfaketime")
    assert spec is not None, "the libfaketime package is a dev dependency"
    assert spec.submodule_search_locations
    library = Path(spec.submodule_search_locations[0]) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    assert library.exists(), library
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"{offset_s:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "DONT_FAKE_MONOTONIC": "1",  # the name older releases read
        "FAKETIME_NO_CACHE": "1",
    }


def runs_of(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Each task's runs, as (attempt, monotonic start), in the order they started."""
    found: defaultdict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in path.read_text().splitlines() if path.exists() else []:
        task_id, attempt, at = line.split()
        found[task_id].append((int(attempt), float(at)))
    return {task_id: sorted(runs, key=lambda r: r[1]) for task_id, runs in found.items()}


def wall_at(monotonic: float) -> float:
    """The machine's wall-clock time at a monotonic moment of the past."""
    return time.time() - (time.monotonic() - monotonic)


@pytest.mark.slow  # waits out a schedule
def test_hosts_whose_clocks_disagree_run_everything_once_and_on_time(
    start_relay: StartRelay, receiver: Receiver, tmp_path: Path
) -> None:
    env = {
        "RELAY_TASK_MODULES": "tests.kinds_for_tests",
        "RELAY_RETRY_SCHEDULE": f"{WEBHOOK_RETRY_S},{WEBHOOK_RETRY_S},{WEBHOOK_RETRY_S}",
        "RELAY_BREAKER_THRESHOLD": "1000",  # the failing webhooks share their receiver's origin with the others
    }
    api_process = start_relay("api", wait=False, **env, **skewed(API_AHEAD_S))
    behind = start_relay("worker", wait=False, **env, **skewed(WORKER_BEHIND_S))
    ahead = start_relay("worker", wait=False, **env, **skewed(WORKER_AHEAD_S))
    for process in (api_process, behind, ahead):
        process.wait_ready()
    api = Api(api_process.url)
    # The skew took: the API's own Date header says so.
    said = parsedate_to_datetime(httpx.get(api_process.url + "/health").headers["date"]).timestamp()
    assert said - time.time() == pytest.approx(API_AHEAD_S, abs=2)

    runs_file = tmp_path / "runs"
    receiver.delay("/done", RECEIVER_HOLD_S)

    def recorded(**extra: object) -> dict[str, object]:
        return {"runs_file": str(runs_file), **extra}

    now_tasks = [api.submit("recorded", recorded(), webhook=receiver.url("/done"))["id"] for _ in range(24)]
    scheduled: dict[str, tuple[float, float]] = {}  # task id -> (monotonic before its submission, after)
    for _ in range(4):
        before = time.monotonic()
        task = api.submit("recorded", recorded(), body={"delay_s": SCHEDULED_DELAY_S})
        scheduled[task["id"]] = (before, time.monotonic())
    retried = [api.submit("recorded", recorded(failures=2, delay_s=TASK_RETRY_DELAY_S))["id"] for _ in range(4)]
    failing_hooks: dict[str, str] = {}  # task id -> its webhook's path: 500, 500, then 200
    for n in range(4):
        path = f"/flaky/{n}"
        receiver.script(path, 500, 500, 200)
        receiver.delay(path, RECEIVER_HOLD_S)
        failing_hooks[api.submit("recorded", recorded(), webhook=receiver.url(path))["id"]] = path

    every = [*now_tasks, *scheduled, *retried, *failing_hooks]
    done = {task_id: api.wait_task(task_id, timeout_s=60) for task_id in every}
    assert {t["status"] for t in done.values()} == {"succeeded"}  # nothing lost
    receiver.wait_for("/done", count=len(now_tasks), timeout_s=30)
    for path in failing_hooks.values():
        receiver.wait_for(path, count=3, timeout_s=30)
    # The end state: the receiver's destination owes nothing more (nothing waits, nothing is in flight), so every
    # webhook that will ever be sent has been.
    wait_until(
        lambda: all(d["owed"] == 0 for d in api.get("/v1/destinations").json()["items"]),
        timeout_s=30,
        message="nothing owed to the receiver",
    )
    runs = runs_of(runs_file)

    # Nothing ran twice: one run per task, three for the retried ones (two failures, then a success).
    assert {task_id: len(runs[task_id]) for task_id in every} == {
        task_id: 3 if task_id in retried else 1 for task_id in every
    }
    # Scheduled work ran neither early (the API's clock is ahead, a worker's further ahead) nor late.
    for task_id, (before, after) in scheduled.items():
        ((_, started),) = runs[task_id]
        assert before + SCHEDULED_DELAY_S <= started <= after + SCHEDULED_DELAY_S + LATE_S, task_id
    # A retried task waited its delay between attempts, whichever worker failed it.
    for task_id in retried:
        starts = [at for _, at in runs[task_id]]
        for first, second in itertools.pairwise(starts):
            assert TASK_RETRY_DELAY_S <= second - first <= TASK_RETRY_DELAY_S + LATE_S, (task_id, starts)

    # No webhook reached its receiver twice (a lease taken by the worker behind never looked expired to the one
    # ahead) ...
    done_hooks = Counter(r.json()["task_id"] for r in receiver.on("/done"))
    assert done_hooks == Counter(now_tasks)
    assert len({r.headers["webhook-id"] for r in receiver.on("/done")}) == len(now_tasks)
    # ... and a failing one was tried three times, each retry after its delay (the receiver holds each request).
    for path in failing_hooks.values():
        arrivals = [r.at for r in receiver.on(path)]
        assert len(arrivals) == 3, (path, arrivals)
        for first, second in itertools.pairwise(arrivals):
            gap = second - first
            assert RECEIVER_HOLD_S + WEBHOOK_RETRY_S * 0.9 - 0.05 <= gap <= RECEIVER_HOLD_S + WEBHOOK_RETRY_S + LATE_S

    # Both workers ran tasks, each on its own skewed clock (a task's started_at is its worker's reading at its first
    # run).
    offsets = Counter()
    for task_id in every:
        started_at = datetime.fromisoformat(str(done[task_id]["started_at"])).timestamp()
        offset = started_at - wall_at(runs[task_id][0][1])
        (skew,) = [s for s in (WORKER_BEHIND_S, WORKER_AHEAD_S) if abs(offset - s) < 3] or [offset]
        offsets[skew] += 1
    assert set(offsets) == {WORKER_BEHIND_S, WORKER_AHEAD_S}, offsets
    api.close()
