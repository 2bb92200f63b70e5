"""No accepted task and no owed webhook is lost when workers, the API, Redis or the receiver go away, and each task
ends once (one final event in its log; tests.support.count_outcome) however often its webhook is sent."""

from __future__ import annotations

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import StartCluster, StartRelay
from tests.support import Api, Receiver, count_outcome, free_port, run_receiver, wait_until, webhook_attempts

pytestmark = pytest.mark.slow

# One retry, late enough that the test can break something before it falls due.
SLOW_RETRY = "3"


def wait_attempts(api: Api, task_id: str, count: int, timeout_s: float = 20.0) -> list[dict[str, object]]:
    return list(
        wait_until(
            lambda: (a := webhook_attempts(api, task_id)) and len(a) >= count and a,
            timeout_s=timeout_s,
            message=f"{count} recorded webhook attempt(s) of {task_id}",
        )
    )


def test_pending_retry_survives_a_killed_worker(
    start_cluster: StartCluster, start_relay: StartRelay, receiver: Receiver
) -> None:
    relay = start_cluster(RELAY_RETRY_SCHEDULE=SLOW_RETRY)
    url = receiver.script("/hook", 500, 200)
    task = relay.client.submit("echo", {"keep": "me"}, webhook=url)
    wait_attempts(relay.client, task["id"], 1)  # the failure is recorded: the retry is scheduled

    relay.worker.kill()
    start_relay("worker", RELAY_RETRY_SCHEDULE=SLOW_RETRY)

    first, second = receiver.wait_for("/hook", 2, timeout_s=20)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    attempts = wait_attempts(relay.client, task["id"], 2)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "failed"),
        (2, 200, "delivered"),
    ]
    count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)


def test_pending_retry_survives_an_api_restart(start_cluster: StartCluster, receiver: Receiver) -> None:
    relay = start_cluster(RELAY_RETRY_SCHEDULE=SLOW_RETRY)
    url = receiver.script("/hook", 500, 200)
    task = relay.client.submit("echo", {"keep": "me"}, webhook=url)
    wait_attempts(relay.client, task["id"], 1)

    relay.api.stop()
    receiver.wait_for("/hook", 2, timeout_s=20)  # the retry needs no API
    relay.api.start()

    assert relay.client.task(task["id"])["status"] == "succeeded"
    assert relay.client.task(task["id"])["result"] == {"keep": "me"}
    attempts = wait_attempts(relay.client, task["id"], 2)
    assert [a["outcome"] for a in attempts] == ["failed", "delivered"]
    count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)


def test_task_of_a_worker_killed_mid_task_runs_again_and_is_delivered(
    start_cluster: StartCluster, start_relay: StartRelay, receiver: Receiver
) -> None:
    relay = start_cluster()
    task = relay.client.submit("sleep", {"seconds": 4}, webhook=receiver.url("/hook"))
    wait_until(lambda: relay.client.task(task["id"])["status"] == "running", message="the task to run")

    relay.worker.kill()
    start_relay("worker")

    # Dramatiq hands the message to the new worker once the dead one's heartbeat is 10 s old.
    done = relay.client.wait_task(task["id"], timeout_s=60)
    assert done["status"] == "succeeded"
    assert done["result"] == {"slept": 4}
    hook = receiver.wait_for("/hook", 1, timeout_s=10)[-1]
    assert hook.json()["type"] == "task.completed"
    assert hook.json()["data"] == {"status": "succeeded", "result": {"slept": 4}}
    count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)


def test_webhook_of_a_worker_killed_mid_delivery_is_sent_again(
    start_cluster: StartCluster, start_relay: StartRelay, receiver: Receiver
) -> None:
    # The lease on an attempt is RELAY_WEBHOOK_TIMEOUT + 30 s (32 s here). The receiver holds the first
    # request beyond the 2 s timeout; the worker is killed well within it, while it waits for the answer.
    relay = start_cluster(RELAY_WEBHOOK_TIMEOUT="2")
    url = receiver.delay("/slow", 10, 0)
    task = relay.client.submit("echo", {"at": "least once"}, webhook=url)
    receiver.wait_for("/slow", 1)

    relay.worker.kill()
    start_relay("worker", RELAY_WEBHOOK_TIMEOUT="2")

    first, second = receiver.wait_for("/slow", 2, timeout_s=60)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    # The killed attempt never finished, so it left no record; the one that reached the receiver did.
    attempts = wait_attempts(relay.client, task["id"], 1)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [(1, 200, "delivered")]
    outcome = count_outcome(relay.client, [task["id"]], receiver=receiver, path="/slow")
    outcome.assert_every_task_completed_once(1)
    assert outcome.webhooks_duplicated == 1  # the killed attempt's, sent again: at least once


def test_pending_retry_survives_a_redis_restart(
    start_cluster: StartCluster, redis_server: RedisServer, receiver: Receiver
) -> None:
    relay = start_cluster(RELAY_RETRY_SCHEDULE=SLOW_RETRY)
    url = receiver.script("/hook", 500, 200)
    task = relay.client.submit("echo", {"keep": "me"}, webhook=url)
    wait_attempts(relay.client, task["id"], 1)

    redis_server.stop()
    redis_server.start()

    first, second = receiver.wait_for("/hook", 2, timeout_s=30)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert relay.client.task(task["id"])["status"] == "succeeded"
    attempts = wait_attempts(relay.client, task["id"], 2)
    assert [a["outcome"] for a in attempts] == ["failed", "delivered"]
    count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)
    # And the cluster still takes new work.
    later = relay.client.submit("echo", "after", webhook=receiver.url("/later"))
    assert receiver.wait_for("/later")[0].json()["task_id"] == later["id"]


def test_event_reaches_a_receiver_that_was_down_for_several_attempts(start_cluster: StartCluster) -> None:
    relay = start_cluster(RELAY_RETRY_SCHEDULE="0.2,0.3,0.5,1,1,1,1,1,1,1")
    port = free_port()
    task = relay.client.submit("echo", {"late": True}, webhook=f"http://127.0.0.1:{port}/hook")
    refused = wait_attempts(relay.client, task["id"], 3)
    assert all(a["status_code"] is None and a["error"] for a in refused)

    with run_receiver(port) as receiver:
        (hook,) = receiver.wait_for("/hook", 1, timeout_s=20)
        count_outcome(relay.client, [task["id"]], receiver=receiver).assert_every_task_completed_once(1)

    assert hook.json()["data"] == {"status": "succeeded", "result": {"late": True}}
    attempts = wait_attempts(relay.client, task["id"], 4)
    assert attempts[-1]["outcome"] == "delivered"
    assert all(a["outcome"] == "failed" for a in attempts[:-1])
    assert len({a["event_id"] for a in attempts}) == 1
    assert relay.client.get("/v1/dead-letters", key="admin-token").json()["items"] == []


def test_a_task_waiting_to_retry_its_work_survives_a_sigkill_of_the_worker_and_redis_and_runs_once(
    start_cluster: StartCluster, redis_server: RedisServer, receiver: Receiver
) -> None:
    relay = start_cluster(RELAY_TASK_MODULES="tests.kinds_for_tests")
    tasks = [
        relay.client.submit("flaky", {"failures": 1, "delay_s": 3}, webhook=receiver.url("/retried")) for _ in range(5)
    ]
    for task in tasks:
        wait_until(
            lambda t=task: relay.client.task(t["id"])["status"] == "scheduled",
            timeout_s=15,
            message="each task to wait for its second attempt",
        )

    relay.worker.kill()  # SIGKILL: whatever it held in memory is gone
    redis_server.kill()  # only what the append-only file holds comes back
    redis_server.start()
    relay.worker.start()

    for task in tasks:
        relay.client.wait_task(task["id"], timeout_s=40)
    receiver.wait_for("/retried", len(tasks), timeout_s=20)
    outcome = count_outcome(relay.client, [t["id"] for t in tasks], receiver=receiver, path="/retried")
    outcome.assert_every_task_completed_once(5)
    assert outcome.webhooks_duplicated == 0  # each ran its end once, after the restart: one webhook each
    for task in tasks:
        types = [e["type"] for e in relay.client.get(f"/v1/tasks/{task['id']}/events").json()["events"]]
        # Ran its second attempt once: one retry, one start after it, one end.
        assert types == ["task.progress", "task.retrying", "task.progress", "task.completed"]
        assert relay.client.task(task["id"])["attempt"] == 2
