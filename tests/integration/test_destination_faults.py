"""Flow control per destination under faults, with real processes: isolation from a hanging receiver, the breaker
against a receiver that is down (with the signed operational events), caps across two worker processes, and a
worker killed while it holds slots. Counted (tests.support.count_outcome): accepted, completed, lost, ended once,
webhooks missing and duplicated."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.integration.conftest import StartCluster, StartRelay
from tests.integration.test_destinations import delivered_ids, destination_of
from tests.support import Api, Receiver, count_outcome, dead_letters, run_receiver, wait_until

pytestmark = pytest.mark.slow


def test_a_hanging_destination_does_not_hold_up_another_tenants_webhooks(start_cluster: StartCluster) -> None:
    relay = start_cluster(RELAY_WEBHOOK_TIMEOUT="30", RELAY_DESTINATION_MAX_IN_FLIGHT="4")
    with run_receiver() as slow, run_receiver() as fast:
        slow.delay("/slow", 20.0)
        for n in range(300):
            relay.client.submit("echo", n, webhook=slow.url("/slow"))
        wait_until(lambda: len(slow.on("/slow")) >= 4, message="the slow receiver holding four requests")
        started = time.time()
        tasks = [relay.client.submit("echo", n, webhook=fast.url("/fast"), key="key-globex") for n in range(50)]
        fast.wait_for("/fast", 50, timeout_s=15)
        # Every one of the other tenant's webhooks arrived while the slow receiver still held its first four.
        assert time.time() - started < 20
        assert len(slow.on("/slow")) == 4
        assert slow.peak_open_requests == 4
        assert len(delivered_ids(fast, "/fast")) == 50 == len(tasks)
        held = destination_of(relay.client, slow.url("").rstrip("/"))
        assert held["in_flight"] == 4
        assert held["owed"] == 300
        assert held["max_in_flight"] == 4


def test_the_breaker_holds_a_dead_receivers_webhooks_probes_and_drains_them_all_when_it_returns(
    start_cluster: StartCluster,
) -> None:
    with run_receiver() as receiver, run_receiver() as ops:
        relay = start_cluster(
            RELAY_BREAKER_THRESHOLD="3",
            RELAY_BREAKER_PROBE_S="1",
            RELAY_DESTINATION_MAX_IN_FLIGHT="40",  # all thirty fail at once, each with its first retry spent
            # A webhook's second retry waits 300 s: a failed probe must not spend one (it would wait that long).
            RELAY_RETRY_SCHEDULE="1,300",
            RELAY_OPS_WEBHOOK_URL=ops.url("/ops"),
        )
        url = receiver.url("/down")
        origin = receiver.url("").rstrip("/")
        relay.client.submit("echo", "first", webhook=url)
        receiver.wait_for("/down", 1)
        # Thirty owed at once (paused meanwhile), then the receiver goes down and they all fail together.
        dst = destination_of(relay.client, origin)
        assert relay.client.post(f"/v1/destinations/{dst['id']}/pause", key="admin-token").status_code == 200
        tasks = [relay.client.submit("echo", n, webhook=url) for n in range(30)]
        wait_until(lambda: destination_of(relay.client, origin)["owed"] == 30, message="thirty webhooks owed")
        receiver.script("/down", 500)
        receiver.received.clear()
        assert relay.client.post(f"/v1/destinations/{dst['id']}/resume", key="admin-token").status_code == 200
        opened = wait_until(
            lambda: (d := destination_of(relay.client, origin)) and d["state"] == "open" and d,
            message="the destination to open",
        )
        # The first wave: every webhook once, all in flight together (the breaker opened on the third failure).
        first_wave = receiver.wait_for("/down", 30)
        assert len(first_wave) == 30
        # While it is open only probes go out, one at a time, the wait doubling: 1, 2, then 4 s. By the third, every
        # webhook's own retry (1 s after its failure) is long due: had the breaker let them go, they would be here.
        probes = wait_until(
            lambda: (r := receiver.on("/down")[30:]) and len(r) >= 3 and r, timeout_s=30, message="three probes"
        )
        assert len(receiver.on("/down")) == 33, "requests while open other than the probes"
        assert len({p.headers["webhook-id"] for p in probes}) == 1  # the oldest owed webhook, each time
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(probes)]
        assert gaps[0] >= 1.9  # each wait starts when the probe before it failed: never sooner
        assert gaps[1] >= 3.9
        assert opened["owed"] == 30
        assert opened["consecutive_failures"] >= 3
        metrics = relay.client.get("/metrics", key=None).text
        assert 'relay_destinations{state="open"} 1.0' in metrics
        held = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("relay_webhooks_held "))
        assert held in (29.0, 30.0)  # all but the probe, when one is out

        receiver.script("/down", 200)  # back: the next probe succeeds, the backlog drains within the cap
        wait_until(
            lambda: len(delivered_ids_ok(receiver, relay.client, tasks)) == 30,
            timeout_s=40,
            message="every held webhook delivered",
        )
        assert dead_letters(relay.client) == []
        assert receiver.peak_open_requests <= 40
        healthy = destination_of(relay.client, origin)
        assert healthy["state"] == "healthy"
        assert healthy["owed"] == 0
        outcome = count_outcome(relay.client, [t["id"] for t in tasks], receiver=receiver, path="/down", name="breaker")
        outcome.assert_every_task_completed_once(30)

        events = ops.wait_for("/ops", 2, timeout_s=20)
        secret = relay.client.get("/v1/ops/signing-secret", key="admin-token").json()["secret"]
        assert relay.client.get("/v1/ops/signing-secret", key="key-acme").status_code == 403
        verified = [Webhook(secret).verify(e.body, e.headers) for e in events]
        assert [v["type"] for v in verified] == ["destination.opened", "destination.recovered"]
        assert verified[0]["data"]["id"] == opened["id"]
        assert verified[0]["data"]["state"] == "open"
        assert verified[1]["data"]["state"] == "healthy"


def delivered_ids_ok(receiver: Receiver, api: Api, tasks: list[dict[str, Any]]) -> set[str]:
    """Tasks whose webhook got a 2xx, as their delivery logs say."""
    done = set()
    for task in tasks:
        attempts = api.get(f"/v1/tasks/{task['id']}/deliveries").json()["attempts"]
        if any(a["outcome"] == "delivered" for a in attempts):
            done.add(task["id"])
    return done


def test_max_in_flight_holds_across_two_worker_processes(start_relay: StartRelay, receiver: Receiver) -> None:
    api = start_relay("api")
    start_relay("worker", "--processes", "2", "--threads", "8")
    client = Api(api.url)
    try:
        client.submit("echo", 0, webhook=receiver.url("/capped"))
        receiver.wait_for("/capped", 1)
        dst = destination_of(client, receiver.url("").rstrip("/"))
        patched = client.request("PATCH", f"/v1/destinations/{dst['id']}", key="admin-token", json={"max_in_flight": 3})
        assert patched.status_code == 200
        assert patched.json()["max_in_flight"] == 3
        receiver.delay("/capped", 0.3)
        receiver.peak_open_requests = 0
        tasks = [client.submit("echo", n, webhook=receiver.url("/capped")) for n in range(60)]
        receiver.wait_for("/capped", 61, timeout_s=30)
        assert receiver.peak_open_requests == 3  # never more, and the cap was used
        assert len(delivered_ids(receiver, "/capped")) == 61 == len(tasks) + 1
        count_outcome(
            client, [t["id"] for t in tasks], receiver=receiver, path="/capped"
        ).assert_every_task_completed_once(60)
        for bad in (
            {"max_in_flight": 0},
            {"max_in_flight": 1001},
            {"rate_per_s": 0.001},
            {"rate_per_s": "x"},
            {"x": 1},
        ):
            answer = client.request("PATCH", f"/v1/destinations/{dst['id']}", key="admin-token", json=bad)
            assert answer.status_code == 422, (bad, answer.text)
    finally:
        client.close()


def test_a_worker_killed_holding_slots_gives_them_back_within_its_lease(
    start_relay: StartRelay, receiver: Receiver
) -> None:
    env = {"RELAY_WEBHOOK_TIMEOUT": "2", "RELAY_DESTINATION_MAX_IN_FLIGHT": "2"}  # a lease of 9 s
    api = start_relay("api", **env)
    worker = start_relay("worker", **env)
    client = Api(api.url)
    try:
        receiver.delay("/k", 60.0)
        tasks = [client.submit("echo", n, webhook=receiver.url("/k")) for n in range(20)]
        wait_until(lambda: len(receiver.on("/k")) == 2, message="two attempts in flight")
        worker.kill()
        receiver.delays.pop("/k")
        start_relay("worker", **env)
        receiver.wait_for("/k", 22, timeout_s=40)
        # Settled: nothing owed to the destination and nothing in flight (the dead worker's slots are back), so no
        # request can come after this.
        wait_until(
            lambda: (d := destination_of(client, receiver.url("").rstrip("/")))["owed"] == 0 and d["in_flight"] == 0,
            timeout_s=20,
            message="the destination to settle",
        )
        ids = [r.headers["webhook-id"] for r in receiver.on("/k")]
        events = {client.get(f"/v1/tasks/{t['id']}/events").json()["events"][-1]["id"] for t in tasks}
        assert set(ids) == events  # accepted 20, delivered 20, none lost
        assert len(ids) - len(set(ids)) == 2  # the two the dead worker held, sent again
        outcome = count_outcome(
            client, [t["id"] for t in tasks], receiver=receiver, path="/k", name="killed holding slots"
        )
        outcome.assert_every_task_completed_once(20)
    finally:
        client.close()
