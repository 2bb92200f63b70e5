"""One master down on a cluster without replicas: a tenant's work whose partitions live on the other masters goes on.

A tenant's signing secrets, its count of open streams and its submit rate are keys of their own, each in the slot its
name hashes to. While the master of that slot is down, the tenant's webhooks to destinations on the live masters still
go out (signed with the secrets the worker read last), its tasks on the live masters are still followed over SSE and
WebSocket (their places counted on the API node), and it may still submit (its rate counted by the API process).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from delivery import keys
from delivery.signing import sign
from tests.cluster import LocalCluster, Node
from tests.faults import cluster_env
from tests.integration.conftest import StartRelay
from tests.support import Api, Receiver, RelayProcess, WsClient, stream_task, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq, pytest.mark.slow]

TENANTS = ("acme", "globex", *(f"t{n}" for n in range(6)))
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)
PARTITIONS = 16
# Webhooks sent while the master of the tenant's secrets is down.
DURING = 12


def _master_of_key(cluster: LocalCluster, key: str) -> Node:
    return cluster.master_for_slot(key_slot(key.encode()))


def _master_of_partition(cluster: LocalCluster, entity_id: str) -> Node:
    part = keys.Layout.of(PARTITIONS, cluster=True).for_id(entity_id)
    assert part.tag is not None
    return cluster.master_for_slot(key_slot(part.tag.encode()))


@dataclass
class Relay:
    api: Api
    worker: RelayProcess
    api_process: RelayProcess


@pytest.fixture
def relay_on_cluster(cluster: LocalCluster, start_relay: StartRelay, rabbitmq_url: str) -> Iterator[Relay]:
    # As the README asks of a cluster Relay runs on: the other masters keep serving their slots while one is down
    # (by default a node that finds a slot without a master refuses every command, CLUSTERDOWN).
    _full_coverage(cluster, "no")
    env = cluster_env(
        cluster, rabbitmq_url, RELAY_PARTITIONS=str(PARTITIONS), RELAY_API_KEYS=API_KEYS, RELAY_SUBMIT_RATE="100"
    )
    api_process = start_relay("api", wait=False, **env)
    worker = start_relay("worker", wait=False, **env)
    for process in (api_process, worker):
        process.wait_ready()
    api = Api(api_process.url)
    yield Relay(api=api, worker=worker, api_process=api_process)
    api.close()
    cluster.heal()
    _full_coverage(cluster, "yes")


def _full_coverage(cluster: LocalCluster, value: str) -> None:
    for node in cluster.nodes():
        client = cluster.client(node)
        client.config_set("cluster-require-full-coverage", value)
        client.close()


def test_webhooks_to_a_live_master_go_out_while_the_master_of_the_tenants_secrets_is_down(
    cluster: LocalCluster, relay_on_cluster: Relay, receiver: Receiver
) -> None:
    api = relay_on_cluster.api
    # A tenant whose destination (this receiver) lives on another master than its signing secrets.
    chosen: tuple[str, Node] | None = None
    for tenant in TENANTS:
        api.submit("echo", {"warm": tenant}, webhook=receiver.url(f"/warm-{tenant}"), key=f"key-{tenant}")
        receiver.wait_for(f"/warm-{tenant}")
        (destination,) = api.get("/v1/destinations", key=f"key-{tenant}").json()["items"]
        secrets_master = _master_of_key(cluster, keys.secrets(tenant))
        if _master_of_partition(cluster, destination["id"]).port != secrets_master.port:
            chosen = (tenant, secrets_master)
            break
    assert chosen is not None, "every tenant's destination shares a master with its secrets"
    tenant, victim = chosen
    key = f"key-{tenant}"
    secret = api.get("/v1/signing-secret", key=key).json()["secret"]

    cluster.kill(victim)
    # A task with a webhook is placed in its destination's partition: every one lands on a live master.
    accepted = [
        api.submit("echo", {"during": n}, webhook=receiver.url("/during"), key=key)["id"] for n in range(DURING)
    ]
    for task_id in accepted:
        assert api.wait_task(task_id, key=key)["status"] == "succeeded"

    def settled() -> bool:
        """Every webhook recorded delivered: none is owed any more, so none can come again."""
        for task_id in accepted:
            attempts = api.get(f"/v1/tasks/{task_id}/deliveries", key=key).json()["attempts"]
            if not any(a["channel"] == "webhook" and a["outcome"] == "delivered" for a in attempts):
                return False
        return True

    wait_until(settled, timeout_s=20, message="every webhook delivered while the master of the secrets is down")
    received = receiver.on("/during")
    ids = Counter(r.headers["webhook-id"] for r in received)
    assert len(accepted) == DURING
    assert sorted(r.json()["task_id"] for r in received) == sorted(accepted)  # each delivered, once
    assert [i for i, n in ids.items() if n > 1] == []  # no duplicates
    for r in received:  # signed with the secret read before the master went down
        expected = sign(secret, r.headers["webhook-id"], int(r.headers["webhook-timestamp"]), r.body)
        assert expected in r.headers["webhook-signature"].split(" ")
    output = relay_on_cluster.worker.output()
    assert output.count(f"the signing secrets of tenant {tenant} cannot be read") == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]


def test_a_tenant_on_a_live_master_submits_and_follows_while_the_master_of_its_rate_and_streams_is_down(
    cluster: LocalCluster, relay_on_cluster: Relay
) -> None:
    api = relay_on_cluster.api
    # A tenant whose submit rate and stream count share a master: with it down, both are counted on the API node.
    tenant = next(
        t
        for t in TENANTS
        if _master_of_key(cluster, keys.tenant_streams(t)).port == _master_of_key(cluster, keys.rate(t)).port
    )
    key = f"key-{tenant}"
    victim = _master_of_key(cluster, keys.tenant_streams(tenant))
    cluster.kill(victim)

    answers: Counter[int] = Counter()

    def placed_elsewhere() -> dict[str, object] | None:
        response = api.post("/v1/tasks", json={"kind": "sleep", "input": {"seconds": 1}, "websocket": True}, key=key)
        answers[response.status_code] += 1
        if response.status_code != 202:
            assert response.status_code == 503, response.text  # placed on the master that is down: nothing stored
            return None
        task = dict(response.json())
        return task if _master_of_partition(cluster, str(task["id"])).port != victim.port else None

    task = wait_until(placed_elsewhere, timeout_s=20, message="a task placed on a live master")
    assert answers[202] >= 1  # a submission is not refused for its rate's master

    socket = WsClient(api.client.base_url.__str__())
    try:
        socket.subscribe(task)
        subscribed = socket.recv()
        assert subscribed["type"] == "subscribed", subscribed
        streamed = stream_task(api.client.base_url.__str__(), str(task["id"]), params={"token": task["ws_token"]})
        pushed = socket.events_until_final(str(task["id"]), ack=True)
    finally:
        socket.close()
    assert streamed.status_code == 200, streamed.body
    assert streamed.ended
    for events in (streamed.events, pushed):
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))  # each event once, in order
        assert events[-1]["type"] == "task.completed"
    output = relay_on_cluster.api_process.output()
    assert output.count(f"the stream places of tenant {tenant} cannot be counted") == 1, output[-4000:]
    assert output.count(f"the submit rate of tenant {tenant} cannot be counted") == 1, output[-4000:]
