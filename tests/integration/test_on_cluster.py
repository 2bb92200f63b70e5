"""Relay on a Redis Cluster of three masters, with RabbitMQ as the broker: the same API, events and promises."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.cluster import LocalCluster
from tests.integration.conftest import Relay, StartRelay
from tests.support import Api, Receiver, WsClient, count_outcome, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq, pytest.mark.slow]

# Twelve tenants: a destination is a tenant and a receiver's origin, so twelve destinations on one receiver.
TENANTS = ("acme", "globex", *(f"t{n}" for n in range(10)))
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)


@pytest.fixture
def on_cluster(start_relay: StartRelay, cluster: LocalCluster, rabbitmq_url: str) -> Iterator[Callable[..., Relay]]:
    """``on_cluster(**RELAY_ENV)``: an API and a worker on the test cluster, with a RabbitMQ vhost as the broker."""
    clients: list[Api] = []

    def start(**env: str) -> Relay:
        settings = {
            "RELAY_REDIS_MODE": "cluster",
            "RELAY_REDIS_URL": cluster.url,
            "RELAY_BROKER_URL": rabbitmq_url,
            "RELAY_PARTITIONS": "16",
            "RELAY_API_KEYS": API_KEYS,
            **env,
        }
        api = start_relay("api", wait=False, **settings)
        worker = start_relay("worker", wait=False, **settings)
        api.wait_ready()
        worker.wait_ready()
        clients.append(Api(api.url))
        return Relay(api=api, worker=worker, client=clients[-1])

    yield start
    for client in clients:
        client.close()


def test_tasks_of_many_destinations_spread_over_the_masters_and_each_webhook_arrives_once(
    on_cluster: Callable[..., Relay], cluster: LocalCluster, receiver: Receiver
) -> None:
    relay = on_cluster()
    api = relay.client
    submitted: list[str] = []
    for i in range(48):
        tenant = TENANTS[i % len(TENANTS)]
        url = receiver.url(f"/hook/{i % 5}")
        body = {"kind": "echo", "input": {"i": i}, "webhook": {"url": url}}
        if i % 3 == 0:
            body["websocket"] = True
        answer = api.post("/v1/tasks", json=body, key=f"key-{tenant}", headers={"Idempotency-Key": f"k{i}"})
        assert answer.status_code == 202, answer.text
        submitted.append(answer.json()["id"])
    # Keyless tasks with no webhook land on any partition.
    plain = [api.submit("echo", {"plain": n})["id"] for n in range(24)]

    hooks = wait_until(
        lambda: (h := [x for x in receiver.received if x.path.startswith("/hook/")]) and len(h) >= 48 and h,
        timeout_s=60,
        message="48 webhooks",
    )
    per_event = Counter(h.headers["webhook-id"] for h in hooks)
    assert sorted(per_event.values()) == [1] * 48
    assert sorted(h.json()["task_id"] for h in hooks) == sorted(submitted)
    acme = [t for i, t in enumerate(submitted) if i % len(TENANTS) == 0]
    outcome = count_outcome(api, acme, name="cluster, acme")
    outcome.assert_every_task_completed_once(len(acme))
    for task_id in plain:
        assert api.wait_task(task_id)["status"] == "succeeded"

    # A retry of a keyed submission answers the first task, wherever its key and its task live.
    again = api.post(
        "/v1/tasks",
        json={"kind": "echo", "input": {"i": 0}, "webhook": {"url": receiver.url("/hook/0")}, "websocket": True},
        key="key-acme",
        headers={"Idempotency-Key": "k0"},
    )
    assert again.status_code == 202, again.text
    assert again.json()["id"] == submitted[0]

    # Lists and figures cover every partition: a tenant's list pages through all of its tasks once.
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/tasks", params=params).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(acme + plain)
    stats = api.get("/v1/stats", key="admin-token").json()
    assert stats["tasks"]["succeeded"] == 48 + 24
    destinations = api.get("/v1/destinations", key="admin-token").json()["items"]
    assert len(destinations) == len(TENANTS)
    assert {d["tenant"] for d in destinations} == set(TENANTS)

    # The operator's view: three masters, every partition on one of them, keys on each.
    view = api.get("/v1/ops/cluster", key="admin-token").json()
    assert view["mode"] == "cluster"
    masters = [n for n in view["nodes"] if n["role"] == "master"]
    assert len(masters) == 3
    assert sum(n["partitions"] for n in masters) == 16
    assert all(n["partitions"] >= 4 for n in masters)
    assert all(n["keys"] > 0 for n in masters)
    assert sum(n["slots"] for n in masters) == 16384


def test_a_socket_on_the_cluster_gets_its_event_and_its_ack_settles_the_delivery(
    on_cluster: Callable[..., Relay], receiver: Receiver
) -> None:
    relay = on_cluster()
    api = relay.client
    task = api.submit("sleep", {"seconds": 1}, webhook=receiver.url("/hook"), body={"websocket": True})
    ws = WsClient(relay.api.url)
    try:
        ws.subscribe(task)
        events = ws.events_until_final(task["id"], ack=True, timeout_s=30)
    finally:
        ws.close()
    assert events[-1]["type"] == "task.completed"
    deliveries = wait_until(
        lambda: (
            (d := api.get(f"/v1/tasks/{task['id']}/deliveries").json())
            and any(a["outcome"] == "acked" for a in d["attempts"])
            and d
        ),
        timeout_s=20,
        message="the ack recorded",
    )
    outcomes = [a["outcome"] for a in deliveries["attempts"]]
    assert outcomes[:1] == ["acked"]
    assert receiver.on("/hook") == []  # acked on the socket: no webhook
