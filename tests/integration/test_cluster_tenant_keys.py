"""One master down on a cluster without replicas: a tenant's work whose partitions live on the other masters goes on.

A tenant's signing secrets and its count of open streams are global keys, each in the slot its name hashes to. While
the master of that slot is down, the tenant's webhooks to destinations on the live masters should still go out, and
its tasks on the live masters should still be followed over SSE.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from delivery import keys
from tests.cluster import LocalCluster, Node
from tests.faults import cluster_env
from tests.integration.conftest import StartRelay
from tests.support import Api, Receiver, stream_task, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq, pytest.mark.slow]

TENANTS = ("acme", "globex", *(f"t{n}" for n in range(6)))
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)
PARTITIONS = 16


def _master_of_key(cluster: LocalCluster, key: str) -> Node:
    return cluster.master_for_slot(key_slot(key.encode()))


def _master_of_partition(cluster: LocalCluster, entity_id: str) -> Node:
    part = keys.Layout.of(PARTITIONS, cluster=True).for_id(entity_id)
    assert part.tag is not None
    return cluster.master_for_slot(key_slot(part.tag.encode()))


@pytest.fixture
def relay_on_cluster(cluster: LocalCluster, start_relay: StartRelay, rabbitmq_url: str) -> Iterator[Api]:
    env = cluster_env(cluster, rabbitmq_url, RELAY_PARTITIONS=str(PARTITIONS), RELAY_API_KEYS=API_KEYS)
    api_process = start_relay("api", wait=False, **env)
    worker = start_relay("worker", wait=False, **env)
    for process in (api_process, worker):
        process.wait_ready()
    api = Api(api_process.url)
    yield api
    api.close()


def test_webhooks_to_a_live_master_go_out_while_the_master_of_the_tenants_secrets_is_down(
    cluster: LocalCluster, relay_on_cluster: Api, receiver: Receiver
) -> None:
    api = relay_on_cluster
    # A tenant whose destination (this receiver) lives on another master than its signing secrets.
    chosen: tuple[str, Node] | None = None
    for tenant in TENANTS:
        warm = api.submit("echo", {"warm": tenant}, webhook=receiver.url(f"/warm-{tenant}"), key=f"key-{tenant}")
        receiver.wait_for(f"/warm-{tenant}")
        (destination,) = api.get("/v1/destinations", key=f"key-{tenant}").json()["items"]
        secrets_master = _master_of_key(cluster, keys.secrets(tenant))
        if _master_of_partition(cluster, destination["id"]).port != secrets_master.port:
            assert _master_of_partition(cluster, warm["id"]).port != secrets_master.port
            chosen = (tenant, secrets_master)
            break
    assert chosen is not None, "every tenant's destination shares a master with its secrets"
    tenant, victim = chosen

    cluster.kill(victim)
    task = api.submit("echo", {"during": True}, webhook=receiver.url("/during"), key=f"key-{tenant}")
    api.wait_task(task["id"], key=f"key-{tenant}")
    # Its destination's master answers: the webhook should not wait for the other master to come back.
    receiver.wait_for("/during", timeout_s=20)


def test_a_task_on_a_live_master_is_followed_while_the_master_of_the_tenants_stream_count_is_down(
    cluster: LocalCluster, relay_on_cluster: Api
) -> None:
    api = relay_on_cluster
    victim = _master_of_key(cluster, keys.tenant_streams("acme"))
    cluster.kill(victim)

    def placed_elsewhere() -> dict[str, object] | None:
        response = api.post("/v1/tasks", json={"kind": "sleep", "input": {"seconds": 2}}, key="key-acme")
        if response.status_code != 202:
            return None  # placed on the master that is down: 503, nothing stored
        task = dict(response.json())
        return task if _master_of_partition(cluster, str(task["id"])).port != victim.port else None

    task = wait_until(placed_elsewhere, timeout_s=20, message="a task placed on a live master")
    streamed = stream_task(api.client.base_url.__str__(), str(task["id"]), params={"token": task["ws_token"]})
    assert streamed.status_code == 200, streamed.body
    assert [e["type"] for e in streamed.events][-1] == "task.completed"
