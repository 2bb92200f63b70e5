"""Scheduled tasks with real processes: they wait durably, run once at their time, survive restarts of
everything, and can be cancelled while they wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import StartCluster
from tests.integration.test_api import assert_json_error, metrics
from tests.support import Receiver


def started_after(task: dict[str, object], moment: str) -> bool:
    return datetime.fromisoformat(str(task["started_at"])) >= datetime.fromisoformat(moment)


@pytest.mark.slow  # waits out a delay
def test_a_delayed_task_waits_scheduled_and_runs_once_at_its_time(
    start_cluster: StartCluster, receiver: Receiver
) -> None:
    relay = start_cluster()
    task = relay.client.submit("echo", {"later": True}, webhook=receiver.url("/later"), body={"delay_s": 2})

    assert task["status"] == "scheduled"
    assert task["run_at"] is not None
    assert relay.client.task(task["id"])["status"] == "scheduled"
    done = relay.client.wait_task(task["id"], timeout_s=20)
    assert done["result"] == {"later": True}
    assert started_after(done, task["run_at"])  # never early
    assert len(receiver.wait_for("/later")) == 1


@pytest.mark.slow  # a restart: a fault test
def test_a_scheduled_task_survives_a_restart_of_redis_the_api_and_the_worker(
    start_cluster: StartCluster, redis_server: RedisServer, receiver: Receiver
) -> None:
    relay = start_cluster()
    run_at = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    task = relay.client.submit("echo", "kept", webhook=receiver.url("/kept"), body={"run_at": run_at})
    assert task["status"] == "scheduled"

    relay.worker.stop()
    relay.api.stop()
    redis_server.kill()  # SIGKILL: only what the append-only file holds comes back
    redis_server.start()
    relay.api.start()
    relay.worker.start()

    done = relay.client.wait_task(task["id"], timeout_s=30)
    assert done["status"] == "succeeded"
    assert started_after(done, task["run_at"])
    (hook,) = receiver.wait_for("/kept")
    assert hook.json()["task_id"] == task["id"]
    # It ran once: one final event, one delivered webhook.
    events = relay.client.get(f"/v1/tasks/{task['id']}/events").json()["events"]
    assert [e["type"] for e in events] == ["task.completed"]


@pytest.mark.slow  # waits out a delay
def test_a_scheduled_task_cancelled_while_it_waits_never_runs(start_cluster: StartCluster) -> None:
    relay = start_cluster()
    cancelled = relay.client.submit("echo", "never", body={"delay_s": 1.5})
    after_it = relay.client.submit("echo", "after", body={"delay_s": 2})

    answer = relay.client.post(f"/v1/tasks/{cancelled['id']}/cancel")
    assert answer.status_code == 202
    assert answer.json()["status"] == "cancelled"

    assert relay.client.wait_task(after_it["id"], timeout_s=20)["status"] == "succeeded"  # its time has passed
    kept = relay.client.task(cancelled["id"])
    assert (kept["status"], kept["started_at"], kept["result"]) == ("cancelled", None, None)
    counted = metrics(relay.client)
    assert counted[("relay_tasks_total", (("status", "scheduled"),))] == 2
    assert counted[("relay_tasks_total", (("status", "cancelled"),))] == 1


BAD_SCHEDULES = [
    ({"delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}, "not both"),
    ({"delay_s": -1}, "delay_s"),
    ({"delay_s": 31 * 86400}, "delay_s"),
    ({"run_at": (datetime.now(UTC) + timedelta(days=31)).isoformat()}, "30 days"),
    ({"run_at": "2030-01-01T00:00:00"}, "offset"),
    ({"run_at": "next tuesday"}, "run_at"),
]


def test_bad_schedules_are_422s_that_say_why(start_cluster: StartCluster) -> None:
    relay = start_cluster()
    for extra, says in BAD_SCHEDULES:
        response = relay.client.post("/v1/tasks", json={"kind": "echo", "input": 1, **extra})
        assert says in assert_json_error(response, 422), extra
