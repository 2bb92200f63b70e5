"""Several API and worker processes on one Redis; and RabbitMQ as the broker."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.conftest import StartCluster, StartRelay
from tests.support import Api, Receiver, count_outcome

TASKS = 50


@pytest.mark.slow  # four Relay processes
def test_two_apis_and_two_workers_deliver_every_task_exactly_once(start_relay: StartRelay, receiver: Receiver) -> None:
    api_a = start_relay("api", wait=False)
    api_b = start_relay("api", wait=False)
    workers = [start_relay("worker", wait=False) for _ in range(2)]
    for process in (api_a, api_b, *workers):
        process.wait_ready()
    clients = [Api(api_a.url), Api(api_b.url)]
    try:
        submitted = [clients[i % 2].submit("echo", {"i": i}, webhook=receiver.url("/hook"))["id"] for i in range(TASKS)]

        receiver.wait_for("/hook", TASKS, timeout_s=60)
        hooks = receiver.on("/hook")
        per_id = Counter(h.headers["webhook-id"] for h in hooks)
        assert [n for n in per_id.values() if n > 1] == []  # no process died: no duplicates
        assert len(per_id) == TASKS
        assert sorted(h.json()["task_id"] for h in hooks) == sorted(submitted)
        assert {h.json()["data"]["result"]["i"] for h in hooks} == set(range(TASKS))
        outcome = count_outcome(clients[0], submitted, receiver=receiver, name="two APIs, two workers")
        outcome.assert_every_task_completed_once(TASKS)

        # A task submitted through API A reads the same through API B, and the other way round.
        for i, task_id in enumerate(submitted[:4]):
            other = clients[(i + 1) % 2]
            task = other.task(task_id)
            assert task["status"] == "succeeded"
            assert task["result"] == {"i": i}
            attempts = other.get(f"/v1/tasks/{task_id}/deliveries").json()["attempts"]
            assert [a["outcome"] for a in attempts] == ["delivered"]
    finally:
        for client in clients:
            client.close()


@pytest.mark.rabbitmq
@pytest.mark.slow  # a RabbitMQ vhost of its own
def test_rabbitmq_broker_runs_tasks_and_delivers_webhooks(
    start_cluster: StartCluster, receiver: Receiver, rabbitmq_url: str
) -> None:
    relay = start_cluster(RELAY_BROKER_URL=rabbitmq_url)

    assert relay.client.get("/ready").status_code == 200
    task = relay.client.submit("echo", {"via": "rabbitmq"}, webhook=receiver.url("/hook"))
    (hook,) = receiver.wait_for("/hook", timeout_s=30)

    assert hook.json()["task_id"] == task["id"]
    assert hook.json()["data"] == {"status": "succeeded", "result": {"via": "rabbitmq"}}
    assert relay.client.wait_task(task["id"])["status"] == "succeeded"
