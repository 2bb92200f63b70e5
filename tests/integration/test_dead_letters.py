"""The dead-letter store through the HTTP API: list, show, replay, delete (`relay dlq` is in test_dead_letter_tools.py)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import Relay
from tests.support import (
    RELAY,
    ROOT,
    Api,
    Receiver,
    dead_letters,
    relay_env,
    wait_dead_letter,
    wait_until,
    webhook_attempts,
)


def make_dead_letter(
    relay: Relay, receiver: Receiver, path: str, *answers: int, key: str = "key-acme"
) -> dict[str, Any]:
    """A task whose webhook to ``path`` dead-letters: a 410 first, then ``answers`` (for replays)."""
    url = receiver.script(path, 410, *answers)
    task = relay.client.submit("echo", {"path": path}, webhook=url, key=key)
    return wait_dead_letter(relay.client, task["id"])


def walk(api: Api, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of the dead-letter list; fails on a page visited twice or a list without an end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = api.get("/v1/dead-letters", key=key, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the dead-letter list never ended with next_cursor null")


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_replay_of_one_dead_letter_delivers_the_same_event_and_removes_it(relay: Relay, receiver: Receiver) -> None:
    dead = make_dead_letter(relay, receiver, "/back", 200)

    response = relay.client.post(f"/v1/dead-letters/{dead['id']}/replay")

    assert response.status_code == 202
    assert response.json() == {"replayed": 1}
    first, again = receiver.wait_for("/back", 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == dead["event"]["id"]
    assert again.body == first.body
    wait_until(
        lambda: relay.client.get(f"/v1/dead-letters/{dead['id']}").status_code == 404,
        message="the delivered dead letter to go away",
    )
    assert dead_letters(relay.client) == []
    attempts = webhook_attempts(relay.client, dead["task_id"])
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "delivered")]


@pytest.mark.slow  # a dead letter, its replay and CLI processes
def test_a_replay_leaves_its_trace_in_the_tasks_deliveries_and_timeline(relay: Relay, receiver: Receiver) -> None:
    # Failed attempts until it dies (the test schedule retries three times), then replayed and delivered.
    url = receiver.script("/flaky", 500, 500, 500, 500, 200)
    task = relay.client.submit("echo", "trace", webhook=url)
    dead = wait_dead_letter(relay.client, task["id"])
    assert relay.client.post(f"/v1/dead-letters/{dead['id']}/replay").json() == {"replayed": 1}
    receiver.wait_for("/flaky", dead["attempts"] + 1)
    wait_until(
        lambda: relay.client.get(f"/v1/dead-letters/{dead['id']}").status_code == 404,
        message="the delivered dead letter to go away",
    )

    answer = relay.client.get(f"/v1/tasks/{task['id']}/deliveries").json()
    attempts = [a for a in answer["attempts"] if a["channel"] == "webhook"]
    assert [a["outcome"] for a in attempts] == ["failed"] * dead["attempts"] + ["delivered"]
    steps = [(s["step"], s["dead_letter_id"], s["reason"], s["event_id"]) for s in answer["steps"]]
    assert steps == [
        ("dead_lettered", dead["id"], "retries_exhausted", dead["event"]["id"]),
        ("replayed", dead["id"], "retries_exhausted", dead["event"]["id"]),
    ]
    died, replayed = (datetime.fromisoformat(s["at"]) for s in answer["steps"])
    assert datetime.fromisoformat(attempts[-2]["at"]) <= died <= replayed <= datetime.fromisoformat(attempts[-1]["at"])

    # The task's timeline from the shell: the failed attempts, then dead-lettered and replayed, then delivered.
    shown = subprocess.run(
        [*RELAY, "tasks", "show", task["id"]],
        env=relay_env("redis://unused", RELAY_URL=relay.api.url, RELAY_API_KEY="key-acme", COLUMNS="200"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    timeline = shown.stdout.split("\nattempts", 1)[1]
    outcomes = [word for line in timeline.splitlines() for word in line.split() if word in _OUTCOMES]
    assert outcomes == ["failed"] * dead["attempts"] + ["dead-lettered", "replayed", "delivered"]


_OUTCOMES = {"failed", "delivered", "dead-lettered", "replayed"}


def test_replay_that_fails_again_comes_back_with_replays_raised(relay: Relay, receiver: Receiver) -> None:
    dead = make_dead_letter(relay, receiver, "/still-gone")

    assert relay.client.post(f"/v1/dead-letters/{dead['id']}/replay").json() == {"replayed": 1}

    again = wait_until(
        lambda: (r := relay.client.get(f"/v1/dead-letters/{dead['id']}").json()) and r.get("replays") == 1 and r,
        message="the dead letter to come back with replays 1",
    )
    assert len(receiver.on("/still-gone")) == 2
    assert again["event"] == dead["event"]
    assert again["reason"] == "endpoint_gone"
    assert again["attempts"] == 2
    assert [d["id"] for d in dead_letters(relay.client)] == [dead["id"]]


def test_bulk_replay_dry_run_counts_and_filters_choose_what_is_replayed(relay: Relay, receiver: Receiver) -> None:
    gone_1 = make_dead_letter(relay, receiver, "/gone-1", 200)
    gone_2 = make_dead_letter(relay, receiver, "/gone-2", 200)
    exhausted = wait_dead_letter(
        relay.client, relay.client.submit("echo", 1, webhook=receiver.script("/broken", 500))["id"]
    )
    globex_gone = make_dead_letter(relay, receiver, "/globex-gone", 200, key="key-globex")
    sent_before = len(receiver.received)

    def replay(body: dict[str, Any], key: str = "admin-token") -> dict[str, Any]:
        response = relay.client.post("/v1/dead-letters/replay", json=body, key=key)
        assert response.status_code == 202, response.text
        return dict(response.json())

    assert replay({"dry_run": True}) == {"matched": 4, "replayed": 0}
    assert replay({"reason": "endpoint_gone", "dry_run": True}) == {"matched": 3, "replayed": 0}
    assert replay({"reason": "endpoint_gone", "tenant": "acme", "dry_run": True}) == {"matched": 2, "replayed": 0}
    assert replay({"reason": "retries_exhausted", "dry_run": True}, key="key-acme") == {"matched": 1, "replayed": 0}
    assert replay({"dry_run": True}, key="key-globex") == {"matched": 1, "replayed": 0}
    # A tenant's `tenant` filter never widens its view, even for real.
    assert replay({"tenant": "acme", "dry_run": False}, key="key-globex") == {"matched": 0, "replayed": 0}

    # A replay takes its letter in the step that queues it: after dry runs and an empty match nothing was taken.
    assert {d["id"]: d["replays"] for d in dead_letters(relay.client)} == dict.fromkeys(
        (d["id"] for d in (gone_1, gone_2, exhausted, globex_gone)), 0
    )
    assert len(receiver.received) == sent_before
    for dead in (gone_1, gone_2, exhausted):
        assert all(a["outcome"] == "failed" for a in webhook_attempts(relay.client, dead["task_id"]))
    assert len(webhook_attempts(relay.client, globex_gone["task_id"], key="key-globex")) == 1
    assert len(dead_letters(relay.client)) == 4

    assert replay({"reason": "endpoint_gone", "tenant": "acme", "dry_run": False}) == {"matched": 2, "replayed": 2}

    receiver.wait_for("/gone-1", 2)
    receiver.wait_for("/gone-2", 2)
    wait_until(
        lambda: {d["id"] for d in dead_letters(relay.client)} == {exhausted["id"], globex_gone["id"]},
        message="only the unmatched dead letters to remain",
    )
    for dead in (gone_1, gone_2):
        assert webhook_attempts(relay.client, dead["task_id"])[-1]["outcome"] == "delivered"
    assert len(receiver.on("/globex-gone")) == 1
    assert len(receiver.on("/broken")) == 4


def test_list_filters_by_reason_tenant_task_and_time(relay: Relay, receiver: Receiver) -> None:
    first = make_dead_letter(relay, receiver, "/a")
    exhausted = wait_dead_letter(
        relay.client, relay.client.submit("echo", 1, webhook=receiver.script("/broken", 500))["id"]
    )
    globex = make_dead_letter(relay, receiver, "/g", key="key-globex")
    last = make_dead_letter(relay, receiver, "/b")

    def ids(key: str = "admin-token", **params: Any) -> list[str]:
        return [d["id"] for d in dead_letters(relay.client, key=key, **params)]

    # Newest first.
    assert ids() == [last["id"], globex["id"], exhausted["id"], first["id"]]
    assert ids(reason="endpoint_gone") == [last["id"], globex["id"], first["id"]]
    assert ids(reason="retries_exhausted") == [exhausted["id"]]
    assert ids(tenant="globex") == [globex["id"]]
    assert ids(tenant="acme", reason="endpoint_gone") == [last["id"], first["id"]]
    assert ids(task_id=exhausted["task_id"]) == [exhausted["id"]]
    assert ids(key="key-acme", task_id=globex["task_id"]) == []

    dead_at = {d["id"]: datetime.fromisoformat(d["dead_at"]) for d in (first, exhausted, globex, last)}
    between_first_and_exhausted = dead_at[first["id"]] + (dead_at[exhausted["id"]] - dead_at[first["id"]]) / 2
    between_globex_and_last = dead_at[globex["id"]] + (dead_at[last["id"]] - dead_at[globex["id"]]) / 2
    assert ids(since=iso(between_first_and_exhausted)) == [last["id"], globex["id"], exhausted["id"]]
    assert ids(until=iso(between_first_and_exhausted)) == [first["id"]]
    assert ids(since=iso(between_first_and_exhausted), until=iso(between_globex_and_last)) == [
        globex["id"],
        exhausted["id"],
    ]
    assert ids(since=iso(dead_at[last["id"]] + timedelta(seconds=1))) == []
    assert relay.client.get("/v1/dead-letters", key="admin-token", params={"reason": "bogus"}).status_code == 422


def test_pagination_walks_every_dead_letter_once(relay: Relay, receiver: Receiver) -> None:
    made = [make_dead_letter(relay, receiver, f"/p{i}")["id"] for i in range(5)]

    response = relay.client.get("/v1/dead-letters", key="admin-token", params={"limit": 2})
    assert len(response.json()["items"]) == 2
    assert response.json()["next_cursor"] is not None

    walked = [d["id"] for d in walk(relay.client, "admin-token", limit=2)]
    assert walked == list(reversed(made))
    assert [d["id"] for d in walk(relay.client, "key-acme", limit=2)] == list(reversed(made))

    bad = relay.client.get("/v1/dead-letters", key="admin-token", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["detail"]


def test_tenants_see_only_their_own_dead_letters(relay: Relay, receiver: Receiver) -> None:
    acme = make_dead_letter(relay, receiver, "/acme")
    globex = make_dead_letter(relay, receiver, "/globex", key="key-globex")
    path = f"/v1/dead-letters/{acme['id']}"

    assert [d["id"] for d in dead_letters(relay.client, key="key-globex")] == [globex["id"]]
    assert dead_letters(relay.client, key="key-globex", tenant="acme") == []
    assert [d["id"] for d in dead_letters(relay.client, key="key-acme")] == [acme["id"]]
    assert {d["id"] for d in dead_letters(relay.client, key="admin-token")} == {acme["id"], globex["id"]}
    assert relay.client.get(path, key="key-acme").json()["id"] == acme["id"]

    for response in (
        relay.client.get(path, key="key-globex"),
        relay.client.post(f"{path}/replay", key="key-globex"),
        relay.client.delete(path, key="key-globex"),
    ):
        assert response.status_code == 404
        assert response.json()["detail"]
    assert relay.client.get("/v1/dead-letters", key="wrong-key").status_code == 401

    # globex's replay took nothing: the letter is still there, never replayed, and nothing more was sent.
    assert relay.client.get(path, key="admin-token").json()["replays"] == 0
    assert len(receiver.on("/acme")) == 1


def test_delete_removes_a_dead_letter(relay: Relay, receiver: Receiver) -> None:
    dead = make_dead_letter(relay, receiver, "/del")
    path = f"/v1/dead-letters/{dead['id']}"

    assert relay.client.delete(path).status_code == 204

    assert relay.client.get(path).status_code == 404
    assert relay.client.delete(path).status_code == 404
    assert relay.client.post(f"{path}/replay").status_code == 404
    assert dead_letters(relay.client) == []


# --- the `relay dlq` CLI ------------------------------------------------------------------------


def test_a_bulk_replay_must_say_whether_it_is_a_dry_run(relay: Relay, receiver: Receiver) -> None:
    dead = make_dead_letter(relay, receiver, "/gone-quiet", 200)
    sent_before = len(receiver.received)

    for body in ({}, {"reason": "endpoint_gone"}):
        response = relay.client.post("/v1/dead-letters/replay", json=body, key="admin-token")
        assert response.status_code == 422
        assert "dry_run" in response.json()["detail"]

    assert [d["replays"] for d in dead_letters(relay.client) if d["id"] == dead["id"]] == [0]
    assert len(receiver.received) == sent_before
