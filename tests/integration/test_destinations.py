"""Destinations with real processes: Retry-After holding a destination, pause and resume, tenancy, and the
``relay destinations`` commands (the faults are in test_destination_faults.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.support import (
    RELAY,
    ROOT,
    Api,
    Receiver,
    WsClient,
    count_outcome,
    dead_letters,
    relay_env,
    wait_dead_letter,
    wait_until,
)


@pytest.fixture(scope="module")
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    """One API and worker for the module; each test has a receiver (so destinations) of its own."""
    with relay_for_many_tests(redis_server, RELAY_WS_ACK_TIMEOUT="3") as shared:  # acks in time on a busy box
        yield shared


def destinations(api: Api, key: str = "admin-token", **params: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/destinations", key=key, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def destination_of(api: Api, origin: str, key: str = "admin-token") -> dict[str, Any]:
    return dict(
        wait_until(
            lambda: next((d for d in destinations(api, key) if d["origin"] == origin), None),
            message=f"the destination of {origin}",
        )
    )


def delivered_ids(receiver: Receiver, path: str) -> set[str]:
    return {r.headers["webhook-id"] for r in receiver.on(path)}


def test_retry_after_holds_every_webhook_of_the_destination(relay: Relay, receiver: Receiver) -> None:
    busy = receiver.script("/busy", (503, {"Retry-After": "3"}), 200)
    first = relay.client.submit("echo", "first", webhook=busy)
    (refused,) = receiver.wait_for("/busy", 1)
    others = [relay.client.submit("echo", n, webhook=receiver.url("/other")) for n in range(5)]
    arrivals = receiver.wait_for("/other", 5, timeout_s=15)
    assert min(r.at for r in arrivals) >= refused.at + 3.0 - 0.05  # held with the whole destination
    relay.client.wait_task(first["id"])
    assert len(others) == 5
    assert len(receiver.wait_for("/busy", 2)) == 2


def test_pause_holds_everything_and_resume_drains_it(relay: Relay, receiver: Receiver) -> None:
    relay.client.submit("echo", 0, webhook=receiver.url("/p"))
    receiver.wait_for("/p", 1)
    dst = destination_of(relay.client, receiver.url("").rstrip("/"), key="key-acme")
    paused = relay.client.post(f"/v1/destinations/{dst['id']}/pause", key="key-acme")
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    tasks = [relay.client.submit("echo", n, webhook=receiver.url("/p")) for n in range(10)]
    for task in tasks:
        relay.client.wait_task(task["id"])
    # A webhook submitted after them to a receiver that is down dead-letters once its whole retry span has
    # passed: by then the paused ones are past theirs too, and still held.
    late = relay.client.submit("echo", "late", webhook="http://127.0.0.1:9/down")
    late_dead = wait_dead_letter(relay.client, late["id"], timeout_s=30)
    assert len(receiver.on("/p")) == 1
    assert [d["task_id"] for d in dead_letters(relay.client)] == [late["id"]]
    assert relay.client.delete(f"/v1/dead-letters/{late_dead['id']}", key="admin-token").status_code == 204
    held = relay.client.get(f"/v1/destinations/{dst['id']}", key="key-acme").json()
    assert held["state"] == "paused"
    assert held["owed"] == 10
    assert held["in_flight"] == 0
    resumed = relay.client.post(f"/v1/destinations/{dst['id']}/resume", key="admin-token")
    assert resumed.status_code == 200
    assert resumed.json()["state"] == "healthy"
    receiver.wait_for("/p", 11)
    assert len(delivered_ids(receiver, "/p")) == 11


RATE_PER_S = 4
RATED = 16


@pytest.mark.slow  # four seconds of webhooks at the rate
def test_rate_per_s_spaces_the_starts_of_a_destinations_webhooks(relay: Relay, receiver: Receiver) -> None:
    relay.client.submit("echo", 0, webhook=receiver.url("/rated"))
    receiver.wait_for("/rated", 1)
    dst = destination_of(relay.client, receiver.url("").rstrip("/"), key="key-acme")
    # Held while they become owed, so that all are due at once on resume: only the rate can space them.
    assert relay.client.post(f"/v1/destinations/{dst['id']}/pause", key="key-acme").status_code == 200
    tasks = [relay.client.submit("echo", n, webhook=receiver.url("/rated")) for n in range(RATED)]
    wait_until(
        lambda: relay.client.get(f"/v1/destinations/{dst['id']}", key="key-acme").json()["owed"] == RATED,
        message="every webhook owed",
    )
    patched = relay.client.request(
        "PATCH", f"/v1/destinations/{dst['id']}", key="key-acme", json={"rate_per_s": RATE_PER_S}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["rate_per_s"] == RATE_PER_S
    assert relay.client.post(f"/v1/destinations/{dst['id']}/resume", key="key-acme").status_code == 200

    hooks = receiver.wait_for("/rated", 1 + RATED, timeout_s=30)[1:]

    arrivals = sorted(h.at for h in hooks)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    # The bucket holds one second of the rate and refills at the rate: at most twice the rate start within any one
    # second (one more for a start that arrived late). Unrated, all sixteen come within a moment.
    assert busiest <= 2 * RATE_PER_S + 1, arrivals
    # The first RATE_PER_S at once, then one every 1 / RATE_PER_S seconds (less half a second of arrival jitter).
    assert arrivals[-1] - arrivals[0] >= (RATED - RATE_PER_S) / RATE_PER_S - 0.5, arrivals
    outcome = count_outcome(relay.client, [t["id"] for t in tasks], receiver=receiver, path="/rated")
    outcome.assert_every_task_completed_once(RATED)


def test_tenants_see_only_their_own_destinations(relay: Relay, receiver: Receiver) -> None:
    relay.client.submit("echo", 1, webhook=receiver.url("/a"))
    relay.client.submit("echo", 2, webhook=receiver.url("/b"), key="key-globex")
    receiver.wait_for("/a", 1)
    receiver.wait_for("/b", 1)
    origin = receiver.url("").rstrip("/")
    assert sorted(d["tenant"] for d in destinations(relay.client) if d["origin"] == origin) == ["acme", "globex"]
    own = destinations(relay.client, "key-acme")
    assert {d["tenant"] for d in own} == {"acme"}
    assert origin in {d["origin"] for d in own}
    assert destinations(relay.client, "key-acme", tenant="globex") == []
    (theirs,) = [d for d in destinations(relay.client, "key-globex") if d["origin"] == origin]
    for method, path in (
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("PATCH", ""),
    ):
        answer = relay.client.request(
            method,
            f"/v1/destinations/{theirs['id']}{path}",
            key="key-acme",
            json={"max_in_flight": 1} if method == "PATCH" else None,
        )
        assert answer.status_code == 404, (method, path, answer.text)
    assert relay.client.get(f"/v1/destinations/{theirs['id']}", key="key-globex").status_code == 200
    assert relay.client.get("/v1/destinations/dst_nope", key="admin-token").status_code == 404
    assert relay.client.get("/v1/destinations", key="key-acme", params={"cursor": "garbage"}).status_code == 422
    assert relay.client.get("/v1/destinations", key="key-acme", params={"state": "weird"}).status_code == 422


@pytest.mark.slow  # one CLI process per command: seconds each on a busy box
def test_relay_destinations_commands(relay: Relay, receiver: Receiver) -> None:
    relay.client.submit("echo", 1, webhook=receiver.url("/cli"))
    receiver.wait_for("/cli", 1)
    env = relay_env("redis://unused", RELAY_URL=relay.api.url)

    def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RELAY, "destinations", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
        )

    listed = relay_cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    origin = receiver.url("").rstrip("/")
    (dst,) = [d for d in map(json.loads, listed.stdout.splitlines()) if d["origin"] == origin]
    table = relay_cli("list")
    assert dst["id"] in table.stdout
    assert "healthy" in table.stdout
    assert relay_cli("pause", dst["id"], "--json").returncode == 0
    assert json.loads(relay_cli("show", dst["id"], "--json").stdout)["state"] == "paused"
    assert relay_cli("list", "--state", "paused", "--json").stdout.count(dst["id"]) == 1
    assert relay_cli("resume", dst["id"]).returncode == 0
    changed = relay_cli("set", dst["id"], "--max-in-flight", "5", "--rate", "2.5", "--json")
    assert changed.returncode == 0, changed.stderr
    assert (json.loads(changed.stdout)["max_in_flight"], json.loads(changed.stdout)["rate_per_s"]) == (5, 2.5)
    assert json.loads(relay_cli("set", dst["id"], "--no-rate", "--json").stdout)["rate_per_s"] is None
    assert relay_cli("set", dst["id"]).returncode == 2
    assert relay_cli("show", "dst_missing").returncode == 1


@pytest.mark.slow  # waits out an ack window
def test_a_paused_destination_never_holds_up_a_websocket_push(relay: Relay, receiver: Receiver) -> None:
    relay.client.submit("echo", 0, webhook=receiver.url("/ws"))
    receiver.wait_for("/ws", 1)
    dst = destination_of(relay.client, receiver.url("").rstrip("/"))
    assert relay.client.post(f"/v1/destinations/{dst['id']}/pause", key="admin-token").status_code == 200
    both = {"websocket": True}
    ws = WsClient(relay.api.url)
    try:
        # Long enough to be followed before they end, on a loaded machine too.
        acked = relay.client.submit("sleep", {"seconds": 4}, webhook=receiver.url("/ws"), body=both)
        unacked = relay.client.submit("sleep", {"seconds": 4}, webhook=receiver.url("/ws"), body=both)
        for task in (acked, unacked):
            ws.subscribe(task)
        # Both pushes arrive; the ack of one settles it, whatever the destination's state; the other is not acked.
        finals: dict[str, str] = {}
        while len(finals) < 2:
            frame = ws.recv(20)
            if frame["type"] != "event":
                continue
            event = frame["event"]
            if event["task_id"] == acked["id"]:
                ws.send({"type": "ack", "event_id": event["id"]})
            if event["type"] in ("task.completed", "task.failed"):
                finals[event["task_id"]] = event["type"]
        assert finals == {acked["id"]: "task.completed", unacked["id"]: "task.completed"}
        outcomes = wait_until(
            lambda: (a := attempts_of(relay.client, unacked["id"])) and ("websocket", "unacked") in a and a,
            message="the unacked push written down",
        )
        assert ("webhook", "delivered") not in outcomes
        assert ("websocket", "acked") in attempts_of(relay.client, acked["id"])
        # The unacked push's webhook is held with the paused destination, and sent once it resumes.
        wait_until(lambda: destination_of(relay.client, dst["origin"])["owed"] == 1, message="the webhook held")
        assert len(receiver.on("/ws")) == 1
        relay.client.post(f"/v1/destinations/{dst['id']}/resume", key="admin-token")
        (sent,) = receiver.wait_for("/ws", 2)[1:]
        assert sent.json()["task_id"] == unacked["id"]
    finally:
        ws.close()


def attempts_of(api: Api, task_id: str) -> list[tuple[str, str]]:
    response = api.get(f"/v1/tasks/{task_id}/deliveries")
    assert response.status_code == 200, response.text
    return [(a["channel"], a["outcome"]) for a in response.json()["attempts"]]
