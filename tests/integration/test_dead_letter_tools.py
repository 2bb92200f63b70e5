"""Dead letters from the shell and over time: ``relay dlq``, the retention, bulk replay of many batches
(beside test_dead_letters.py, so the two run side by side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from delivery import keys
from tests.conftest import RedisServer
from tests.integration.conftest import Relay, StartCluster
from tests.integration.test_dead_letters import make_dead_letter, walk
from tests.support import ROOT, Receiver, dead_letters, wait_until


def dlq(relay: Relay, *args: str, auth: str = "admin-token", input: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["COLUMNS"] = "300"  # rich would fold long ids in a narrow table
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "dlq", *args, "--url", relay.api.url, "--token", auth],
        capture_output=True,
        input=input,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.slow  # a dozen CLI processes, each a new interpreter: the quick run's longest test
def test_dlq_cli_lists_shows_replays_and_purges_with_exit_status(relay: Relay, receiver: Receiver) -> None:
    one = make_dead_letter(relay, receiver, "/one", 200)
    two = make_dead_letter(relay, receiver, "/two", 200)
    three = make_dead_letter(relay, receiver, "/three")

    listed = dlq(relay, "list")
    assert listed.returncode == 0, listed.stderr
    for dead in (one, two, three):
        assert dead["id"] in listed.stdout
        assert dead["task_id"] in listed.stdout
    assert "endpoint_gone" in listed.stdout

    as_json = dlq(relay, "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["id"] for d in lines] == [three["id"], two["id"], one["id"]]
    assert lines[0] == relay.client.get(f"/v1/dead-letters/{three['id']}", key="admin-token").json()

    shown = dlq(relay, "show", one["id"])
    assert shown.returncode == 0, shown.stderr
    assert one["id"] in shown.stdout
    assert one["url"] in shown.stdout
    assert one["event"]["id"] in shown.stdout
    assert "endpoint_gone" in shown.stdout
    assert "410" in shown.stdout.split("attempts")[-1]  # the operator reads every tenant's attempt log
    shown_by_owner = dlq(relay, "show", one["id"], auth="key-acme")
    assert shown_by_owner.returncode == 0, shown_by_owner.stderr
    assert "410" in shown_by_owner.stdout.split("attempts")[-1]

    dry = dlq(relay, "replay", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 would be queued for delivery again" in dry.stdout
    # A replay takes its letter in the step that queues it: after a dry run every letter is still there, unreplayed.
    assert sorted((d["id"], d["replays"]) for d in dead_letters(relay.client)) == sorted(
        (d["id"], 0) for d in (one, two, three)
    )
    assert len(receiver.on("/one")) == len(receiver.on("/two")) == 1

    replayed = dlq(relay, "replay", one["id"], two["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert "queued 2 of 2 for delivery again" in replayed.stdout
    assert receiver.wait_for("/one", 2)[-1].headers["webhook-id"] == one["event"]["id"]
    assert receiver.wait_for("/two", 2)[-1].headers["webhook-id"] == two["event"]["id"]
    wait_until(
        lambda: [d["id"] for d in dead_letters(relay.client)] == [three["id"]],
        message="the replayed dead letters to be delivered and gone",
    )

    missing = dlq(relay, "show", "dl_missing")
    assert missing.returncode == 1
    assert "dl_missing" in missing.stderr

    partly = dlq(relay, "replay", "dl_missing", three["id"])
    assert partly.returncode == 1
    assert "queued 1 of 2 for delivery again" in partly.stdout
    assert "dl_missing" in partly.stderr
    receiver.wait_for("/three", 2)
    wait_until(
        lambda: relay.client.get(f"/v1/dead-letters/{three['id']}").json().get("replays") == 1,
        message="the replayed dead letter to fail again",
    )

    gone = dlq(relay, "purge", "dl_missing")
    assert gone.returncode == 1

    usage = dlq(relay, "replay")
    assert usage.returncode == 2
    assert "--all" in usage.stderr

    both = dlq(relay, "purge", three["id"], "--all")
    assert both.returncode == 2
    assert [d["id"] for d in dead_letters(relay.client)] == [three["id"]]

    refused = dlq(relay, "purge", "--all", input="n\n")
    assert refused.returncode == 0
    assert "Nothing deleted." in refused.stdout
    assert "Delete 1 dead letter for good?" in refused.stderr
    assert [d["id"] for d in dead_letters(relay.client)] == [three["id"]]

    purged = dlq(relay, "purge", "--all", input="y\n")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 1 of 1" in purged.stdout
    assert dead_letters(relay.client) == []


@pytest.mark.slow  # waits out a retention
def test_dead_letters_are_kept_for_the_retention_and_then_gone(
    start_cluster: StartCluster, receiver: Receiver, redis_server: RedisServer
) -> None:
    relay = start_cluster(RELAY_DEAD_LETTER_RETENTION="2")
    dead = make_dead_letter(relay, receiver, "/gone")
    assert relay.client.get(f"/v1/dead-letters/{dead['id']}", key="admin-token").status_code == 200
    client = redis_server.client()
    ttl_s = client.ttl(keys.dead_letter(dead["id"]))
    tenant_ttl_s = client.ttl(keys.of(dead["id"]).dead_letters_of("acme"))
    client.close()
    assert 0 < ttl_s <= 2
    assert 0 < tenant_ttl_s <= 2

    wait_until(
        lambda: relay.client.get(f"/v1/dead-letters/{dead['id']}", key="admin-token").status_code == 404,
        timeout_s=10,
        message="the dead letter to expire",
    )
    assert dead_letters(relay.client) == []


def test_bulk_replay_of_more_than_one_batch_replays_each_once(relay: Relay, receiver: Receiver) -> None:
    from delivery.dead_letters import REPLAY_BATCH

    count = REPLAY_BATCH + 5
    url = receiver.script("/many", 410)
    tasks = [relay.client.submit("echo", {"n": n}, webhook=url) for n in range(count)]
    wait_until(lambda: len(walk(relay.client, "admin-token")) == count, timeout_s=60, message="every dead letter")

    receiver.script("/many", 200)
    result = relay.client.post("/v1/dead-letters/replay", json={"dry_run": False}, key="admin-token")
    assert result.status_code == 202
    assert result.json() == {"matched": count, "replayed": count}
    # Every letter still listed has its replay in flight (a delivered one leaves the list in the same step).
    again = relay.client.post("/v1/dead-letters/replay", json={"dry_run": False}, key="admin-token").json()
    assert again["replayed"] == 0
    receiver.wait_for("/many", 2 * count, timeout_s=60)
    wait_until(lambda: walk(relay.client, "admin-token") == [], timeout_s=30, message="the replays to land")
    # Nothing is owed or in flight any more: no third delivery can come.
    (dst,) = relay.client.get("/v1/destinations", key="admin-token").json()["items"]
    assert (dst["owed"], dst["in_flight"]) == (0, 0)
    assert len(receiver.on("/many")) == 2 * count
    hooks = receiver.on("/many")[count:]
    assert len({h.headers["webhook-id"] for h in hooks}) == count
    assert {h.json()["task_id"] for h in hooks} == {t["id"] for t in tasks}
