"""Task kinds end to end: built-in sleep and fail, time limits, and kinds loaded from RELAY_TASK_MODULES."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, StartRelay, relay_for_many_tests
from tests.support import Api, Receiver, wait_until, webhook_attempts

TEST_KINDS = "tests.kinds_for_tests"


@pytest.fixture(scope="class")
def kinds_relay(redis_server: RedisServer) -> Iterator[Relay]:
    """One API and one worker that also load tests/kinds_for_tests.py, shared by a class of tests."""
    with relay_for_many_tests(redis_server, RELAY_TASK_MODULES=TEST_KINDS) as relay:
        yield relay


def events(api: Api, task_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/events", params={"after_seq": after_seq})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


class TestWithTheTestKinds:
    """One API and one worker, loading tests/kinds_for_tests.py, shared by these tests."""

    def test_sleep_reports_progress_every_second_then_completes(self, kinds_relay: Relay, receiver: Receiver) -> None:
        task = kinds_relay.client.submit("sleep", {"seconds": 2.5}, webhook=receiver.url("/hook"))

        running = wait_until(
            lambda: (t := kinds_relay.client.task(task["id"]))["status"] == "running" and t["progress"] and t,
            timeout_s=10,
            message="the task to run with progress",
        )
        done = kinds_relay.client.wait_task(task["id"], timeout_s=15)
        log = events(kinds_relay.client, task["id"])

        assert 0 <= running["progress"]["percent"] < 100
        assert running["started_at"] is not None
        assert running["finished_at"] is None
        assert done["status"] == "succeeded"
        assert done["result"] == {"slept": 2.5}
        assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
        *progress, final = log
        assert [e["type"] for e in progress] == ["task.progress"] * len(progress)
        assert len(progress) >= 3  # 2.5 s at least once a second, plus the start
        percents = [e["data"]["percent"] for e in progress]
        assert percents == sorted(percents)
        assert percents[-1] == 100
        gaps = [
            (datetime.fromisoformat(b["created_at"]) - datetime.fromisoformat(a["created_at"])).total_seconds()
            for a, b in itertools.pairwise(progress)
        ]
        assert max(gaps) < 1.5
        assert final["type"] == "task.completed"
        assert final["data"] == {"status": "succeeded", "result": {"slept": 2.5}}
        assert done["progress"] is not None
        assert done["progress"]["percent"] == 100

        # Progress goes to WebSocket only: the webhook gets the final event and nothing else.
        (hook,) = receiver.wait_for("/hook")
        # Only the final event was ever owed by webhook (the attempt log lists what was owed and sent).
        # (written once the receiver has answered: it may come a moment after the receiver has the webhook)
        sent = wait_until(
            lambda: webhook_attempts(kinds_relay.client, task["id"]),
            message="the webhook's attempt to be recorded",
        )
        assert [a["event_id"] for a in sent] == [final["id"]]
        assert len(receiver.on("/hook")) == 1
        assert hook.json()["type"] == "task.completed"
        assert hook.json()["id"] == final["id"]
        assert hook.json()["seq"] == final["seq"]

    def test_fail_ends_failed_with_its_error_and_the_webhook_gets_task_failed(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        task = kinds_relay.client.submit("fail", {"message": "boom"}, webhook=receiver.url("/hook"))

        done = kinds_relay.client.wait_task(task["id"])
        (hook,) = receiver.wait_for("/hook")

        assert done["status"] == "failed"
        assert done["result"] is None
        assert set(done["error"]) == {"type", "message"}
        assert done["error"]["message"] == "boom"
        assert done["error"]["type"]
        (event,) = events(kinds_relay.client, task["id"])
        assert event["type"] == "task.failed"
        assert event["seq"] == 1
        assert event["data"] == {"status": "failed", "error": done["error"]}
        assert hook.json() == event

    def test_a_kind_over_its_time_limit_fails_with_time_limit_exceeded(self, kinds_relay: Relay) -> None:
        task = kinds_relay.client.submit("slow", None)

        done = kinds_relay.client.wait_task(task["id"], timeout_s=15)

        assert done["status"] == "failed"
        assert done["error"]["type"] == "TimeLimitExceeded"
        ran_s = (
            datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
        ).total_seconds()
        assert 0.9 <= ran_s < 4  # stopped at its 1 s limit, not after its 5 s sleep
        (event,) = events(kinds_relay.client, task["id"])
        assert event["type"] == "task.failed"
        assert event["data"]["error"]["type"] == "TimeLimitExceeded"

    def test_a_plain_function_kind_from_relay_task_modules_runs_and_reports_progress(self, kinds_relay: Relay) -> None:
        task = kinds_relay.client.submit("count_sync", {"steps": 4})

        done = kinds_relay.client.wait_task(task["id"])
        log = events(kinds_relay.client, task["id"])

        assert done["status"] == "succeeded"
        assert done["result"] == {"steps": 4, "total": 10}
        assert [e["type"] for e in log] == ["task.progress"] * 4 + ["task.completed"]
        assert [e["data"]["percent"] for e in log[:4]] == [25, 50, 75, 100]
        assert log[0]["data"]["message"] == "step 1 of 4"
        assert [e["seq"] for e in log] == [1, 2, 3, 4, 5]

    def test_a_kind_from_relay_task_modules_checks_its_input(self, kinds_relay: Relay) -> None:
        response = kinds_relay.client.post("/v1/tasks", json={"kind": "count_sync", "input": {"steps": 0}})
        assert response.status_code == 422
        assert "count_sync" in response.json()["detail"]


def test_kinds_from_relay_task_modules_are_unknown_without_it(start_relay: StartRelay) -> None:
    api = Api(start_relay("api").url)
    response = api.post("/v1/tasks", json={"kind": "count_sync", "input": {"steps": 1}})
    api.close()
    assert response.status_code == 422
    assert "unknown task kind" in response.json()["detail"]


@pytest.mark.parametrize("role", ["api", "worker"])
def test_a_task_module_that_cannot_be_imported_stops_the_process_with_the_reason(
    start_relay: StartRelay, role: str
) -> None:
    process = start_relay(role, wait=False, RELAY_TASK_MODULES=f"{TEST_KINDS},tests.no_such_kinds_module")
    assert process.process is not None

    wait_until(lambda: process.process.poll() is not None, timeout_s=20, message=f"relay {role} to exit")

    assert process.process.returncode != 0
    output = process.output()
    assert "RELAY_TASK_MODULES" in output
    assert "tests.no_such_kinds_module" in output
    assert "Traceback" not in output


@pytest.mark.slow  # load: a backlog of 500
def test_a_worker_that_starts_under_a_backlog_runs_it_all_from_its_first_message(
    start_relay: StartRelay,
) -> None:
    api = start_relay("api")
    client = Api(api.url)
    try:
        tasks = [client.submit("echo", {"n": n}) for n in range(500)]  # queued before any worker exists
        worker = start_relay("worker", "--processes", "2", "--threads", "16")
        for task in tasks:
            assert client.wait_task(task["id"], timeout_s=30)["status"] == "succeeded"
        log = worker.output()
        assert "runtime is not started" not in log  # no message was taken before the worker could run it
        assert "Retries" not in log
    finally:
        client.close()
