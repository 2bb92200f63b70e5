"""Nothing accepted is lost when Redis crashes, restarts or stalls, or a worker dies mid-run.

Each test runs real processes (redis-server, relay api, relay worker, a receiver), submits tasks the way a
careful client does (retrying a 503 or a dropped connection with the same Idempotency-Key), breaks something
while they run, then counts (tests.support.count_outcome): accepted, completed, lost (must be 0), tasks that did
not end exactly once (must be 0: one final event in each task's log) and duplicated webhooks (reported: delivery
is at-least-once).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import StartCluster, StartRelay, purge_queues
from tests.support import Api, Outcome, Receiver, count_outcome, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# How long a client keeps retrying one submission.
SUBMIT_PATIENCE_S = 60.0
# How long the tests wait for every accepted task to end (the sweeper's first grace is 15 s, then 30 s).
END_PATIENCE_S = 75.0


@dataclass
class Tally:
    """What a client saw, and what became of it."""

    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> task id
    refused: Counter[int] = field(default_factory=Counter)  # status code (0: no answer) -> times
    lock: threading.Lock = field(default_factory=threading.Lock)


def submit_with_retries(base_url: str, bodies: list[dict[str, Any]], tally: Tally, *, prefix: str) -> None:
    """Submit every body with its own Idempotency-Key, retrying 5xx, 429 and dropped connections."""

    def one(index: int) -> None:
        key = f"{prefix}-{index}"
        deadline = time.monotonic() + SUBMIT_PATIENCE_S
        with httpx.Client(base_url=base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.post(
                        "/v1/tasks",
                        json=bodies[index],
                        headers={"Authorization": "Bearer key-acme", "Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    status = 0
                else:
                    if response.status_code == 202:
                        with tally.lock:
                            tally.accepted[key] = response.json()["id"]
                        return
                    status = response.status_code
                    assert status in (429, 503), response.text  # nothing else is a fault of the server's
                with tally.lock:
                    tally.refused[status] += 1
                time.sleep(0.2)
        raise AssertionError(f"{key} was never accepted")

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(one, i) for i in range(len(bodies))]:
            future.result()


def wait_all_ended(base_url: str, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every task that ends within END_PATIENCE_S, by id (a task missing from the answer is lost)."""
    ended: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + END_PATIENCE_S
    with httpx.Client(base_url=base_url, timeout=5, headers={"Authorization": "Bearer key-acme"}) as client:
        while time.monotonic() < deadline and len(ended) < len(task_ids):
            for task_id in task_ids:
                if task_id in ended:
                    continue
                try:
                    response = client.get(f"/v1/tasks/{task_id}")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and response.json()["status"] in ("succeeded", "failed"):
                    ended[task_id] = response.json()
            time.sleep(0.5)
    return ended


def check_idempotency(base_url: str, tally: Tally, bodies: list[dict[str, Any]], prefix: str) -> None:
    """Each key, sent again, answers with its one task: no key made two tasks."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        for index, body in enumerate(bodies):
            key = f"{prefix}-{index}"
            again = client.post(
                "/v1/tasks", json=body, headers={"Authorization": "Bearer key-acme", "Idempotency-Key": key}
            )
            assert again.status_code == 202, again.text
            assert again.json()["id"] == tally.accepted[key]


def bodies_for(count: int, url: str) -> list[dict[str, Any]]:
    """Echo tasks and sleep tasks (long enough to be running when the fault comes), alternately."""
    return [
        {"kind": "echo", "input": {"n": i}, "webhook": {"url": url}}
        if i % 2
        else {"kind": "sleep", "input": {"seconds": 0.5 + (i % 5) * 0.4}, "webhook": {"url": url}}
        for i in range(count)
    ]


@contextmanager
def submitting(base_url: str, bodies: list[dict[str, Any]], tally: Tally, prefix: str) -> Iterator[None]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            submit_with_retries(base_url, bodies, tally, prefix=prefix)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    thread.join(SUBMIT_PATIENCE_S + 30)
    assert not thread.is_alive(), "the submitting client never finished"
    if errors:
        raise errors[0]


def count_and_check(name: str, base_url: str, tally: Tally, receiver: Receiver, submitted: int) -> Outcome:
    """Wait for every accepted task to end and its webhook to arrive, print the counts, and fail on any loss or on
    a task that did not end exactly once (duplicated webhooks are reported: delivery is at-least-once)."""
    ended = wait_all_ended(base_url, list(tally.accepted.values()))
    with contextlib.suppress(AssertionError):  # counted below
        wait_until(lambda: len({h.json()["task_id"] for h in receiver.on("/hook")}) >= len(ended), timeout_s=30)
    api = Api(base_url)
    try:
        outcome = count_outcome(api, tally.accepted.values(), receiver=receiver, path="/hook", name=name)
    finally:
        api.close()
    print(f"{name}: refused by status {dict(tally.refused)}")
    outcome.assert_every_task_completed_once(submitted)
    return outcome


def wait_some_running(base_url: str, tally: Tally, count: int) -> None:
    """Until ``count`` of the accepted tasks are running at once (one listing a look: reading each task in turn
    took seconds on a busy box, longer than the sleep tasks run, and a look could miss them all)."""

    def running() -> bool:
        with tally.lock:
            accepted = set(tally.accepted.values())
        with httpx.Client(base_url=base_url, timeout=5, headers={"Authorization": "Bearer key-acme"}) as client:
            response = client.get("/v1/tasks", params={"status": "running", "limit": 500})
        return response.status_code == 200 and len({t["id"] for t in response.json()["items"]} & accepted) >= count

    wait_until(running, timeout_s=30, interval_s=0.1, message=f"{count} tasks running")


def test_redis_killed_twice_while_tasks_are_submitted_and_run_loses_none(
    start_cluster: StartCluster, redis_server: RedisServer, receiver: Receiver
) -> None:
    relay = start_cluster()
    bodies = bodies_for(120, receiver.url("/hook"))
    tally = Tally()
    with submitting(relay.api.url, bodies, tally, "kill"):
        wait_some_running(relay.api.url, tally, 3)
        redis_server.kill()  # tasks queued, running and finishing lose their connection mid-write
        time.sleep(3)
        redis_server.start()  # on its append-only file
        time.sleep(3)
        redis_server.kill()
        time.sleep(1)  # a blip: running tasks must not fail for it
        redis_server.start()

    count_and_check("redis SIGKILL x2", relay.api.url, tally, receiver, len(bodies))
    check_idempotency(relay.api.url, tally, bodies, "kill")


def test_redis_frozen_past_every_timeout_three_times_loses_none(
    start_cluster: StartCluster, redis_server: RedisServer, receiver: Receiver
) -> None:
    relay = start_cluster()
    bodies = bodies_for(100, receiver.url("/hook"))
    tally = Tally()
    try:
        with submitting(relay.api.url, bodies, tally, "freeze"):
            wait_some_running(relay.api.url, tally, 3)
            for _ in range(3):
                redis_server.freeze()
                time.sleep(8)  # past the API's 2 s, the broker client's 5 s and Dramatiq's fetch timeouts
                redis_server.thaw()
                time.sleep(3)
    finally:
        redis_server.thaw()

    count_and_check("redis SIGSTOP 8 s x3", relay.api.url, tally, receiver, len(bodies))
    check_idempotency(relay.api.url, tally, bodies, "freeze")


def test_a_stalled_redis_answers_503_at_once_instead_of_hanging(
    start_cluster: StartCluster, redis_server: RedisServer
) -> None:
    relay = start_cluster()
    task = relay.client.submit("echo", "before the stall")
    redis_server.freeze()
    try:
        with httpx.Client(base_url=relay.api.url, timeout=4, headers={"Authorization": "Bearer key-acme"}) as client:
            # A client with a 4 s timeout gets an answer, not a hang, to each of these.
            assert client.get(f"/v1/tasks/{task['id']}").status_code == 503
            submit = client.post("/v1/tasks", json={"kind": "echo", "input": 1}, headers={"Idempotency-Key": "s-1"})
            assert submit.status_code == 503
            # The step may still run once Redis resumes: the client is told so, and how to retry safely.
            assert "may have been accepted" in submit.json()["detail"]
            assert "same Idempotency-Key" in submit.json()["detail"]
            assert client.get("/v1/dead-letters", headers={"Authorization": "Bearer admin-token"}).status_code == 503
            for _ in range(5):  # each check is answered, and none leaves a thread waiting behind it
                ready = client.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["redis"].startswith("unavailable")
    finally:
        redis_server.thaw()
    assert relay.client.task(task["id"])["id"] == task["id"]


def test_tasks_of_a_worker_killed_mid_run_end_once_on_another(
    start_cluster: StartCluster, start_relay: StartRelay, receiver: Receiver
) -> None:
    relay = start_cluster()
    bodies = [{"kind": "sleep", "input": {"seconds": 3}, "webhook": {"url": receiver.url("/hook")}}] * 24
    tally = Tally()
    submit_with_retries(relay.api.url, bodies, tally, prefix="killed-worker")
    wait_some_running(relay.api.url, tally, 4)

    relay.worker.kill()
    start_relay("worker")

    # A task that ran twice still ended once: one final event per task (checked by count_and_check).
    count_and_check("worker SIGKILL mid-run", relay.api.url, tally, receiver, len(bodies))


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += [int(child), *descendants(int(child))]
    return found


def test_a_killed_worker_process_is_started_again_by_relay_worker(
    start_cluster: StartCluster, receiver: Receiver
) -> None:
    relay = start_cluster()
    assert relay.worker.process is not None
    before = descendants(relay.worker.process.pid)
    worker_process = before[-1]  # relay worker -> dramatiq's main process -> its worker process
    os.kill(worker_process, signal.SIGKILL)

    wait_until(
        lambda: relay.worker.output().count("Worker process is ready for action") >= 2,
        timeout_s=30,
        message="a new worker process",
    )
    assert relay.worker.process.poll() is None  # relay worker itself goes on
    task = relay.client.submit("echo", {"after": "restart"}, webhook=receiver.url("/hook"))
    assert relay.client.wait_task(task["id"])["status"] == "succeeded"
    assert receiver.wait_for("/hook")[0].json()["task_id"] == task["id"]
    assert worker_process not in descendants(relay.worker.process.pid)
    count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_tasks_whose_broker_messages_are_lost_still_run(
    start_relay: StartRelay,
    redis_server: RedisServer,
    receiver: Receiver,
    broker: str,
    request: pytest.FixtureRequest,
) -> None:
    env: dict[str, str] = {}
    if broker == "rabbitmq":
        env["RELAY_BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
    api = start_relay("api", **env)
    client = Api(api.url)
    try:
        tasks = [client.submit("echo", {"n": n}, webhook=receiver.url("/hook")) for n in range(5)]
        # Every message is lost (a crash before the broker kept them, a purge): only Relay's record remains.
        if broker == "rabbitmq":
            purge_queues(env["RELAY_BROKER_URL"])
        else:
            redis = redis_server.client()
            assert redis.delete("dramatiq:relay", "dramatiq:relay.msgs") == 2
            redis.close()
        worker = start_relay("worker", **env)

        for task in tasks:  # the sweeper finds them overdue (15 s after submit) and enqueues them again
            assert client.wait_task(task["id"], timeout_s=45)["status"] == "succeeded"
        assert {h.json()["task_id"] for h in receiver.wait_for("/hook", 5)} == {t["id"] for t in tasks}
        assert "owed tasks again" in worker.output()
        outcome = count_outcome(client, [t["id"] for t in tasks], receiver=receiver, name=f"{broker} messages lost")
        outcome.assert_every_task_completed_once(5)
    finally:
        client.close()
