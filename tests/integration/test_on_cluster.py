"""Relay on a Redis Cluster of three masters, with RabbitMQ as the broker: the same API, events and promises.

The scenarios a user would notice (cancel, scheduled and retried work, dead letters and bulk replay, destinations,
streams resumed across API nodes, figures and lists) each run on one start of an API and a worker, over many
tenants, so that their tasks, destinations and dead letters sit on every master; each counts what matters.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from redis.crc import key_slot
from standardwebhooks.webhooks import Webhook

from delivery import keys
from delivery.destinations import destination_id
from tests.cluster import LocalCluster
from tests.integration.conftest import Relay, StartRelay
from tests.support import (
    Api,
    Receiver,
    Streamed,
    WsClient,
    count_outcome,
    run_receiver,
    stream_task,
    task_events,
    wait_until,
    webhook_attempts,
)

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq, pytest.mark.slow]

# Twelve tenants: a destination is a tenant and a receiver's origin, so twelve destinations on one receiver.
TENANTS = ("acme", "globex", *(f"t{n}" for n in range(10)))
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)
PARTITIONS = 16
ADMIN = "admin-token"
TEST_KINDS = {"RELAY_TASK_MODULES": "tests.kinds_for_tests"}
FINAL = ("task.completed", "task.failed", "task.cancelled")


def key_of(tenant: str) -> str:
    return f"key-{tenant}"


@dataclass
class ClusterRelay(Relay):
    """An API and a worker on the cluster, and the settings they run with (for another API node beside them)."""

    settings: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def on_cluster(
    start_relay: StartRelay, cluster: LocalCluster, rabbitmq_url: str
) -> Iterator[Callable[..., ClusterRelay]]:
    """``on_cluster(worker_args=(), **RELAY_ENV)``: an API and a worker on the test cluster, with a RabbitMQ vhost as
    the broker (``worker_args``: the worker's command line, else one process of eight threads)."""
    clients: list[Api] = []

    def start(worker_args: Sequence[str] = (), **env: str) -> ClusterRelay:
        settings = {
            "RELAY_REDIS_MODE": "cluster",
            "RELAY_REDIS_URL": cluster.url,
            "RELAY_BROKER_URL": rabbitmq_url,
            "RELAY_PARTITIONS": str(PARTITIONS),
            "RELAY_API_KEYS": API_KEYS,
            **env,
        }
        api = start_relay("api", wait=False, **settings)
        worker = start_relay("worker", *worker_args, wait=False, **settings)
        api.wait_ready()
        worker.wait_ready()
        clients.append(Api(api.url))
        return ClusterRelay(api=api, worker=worker, client=clients[-1], settings=settings)

    yield start
    for client in clients:
        client.close()


def masters_of(cluster: LocalCluster, ids: Iterator[str] | Sequence[str]) -> set[int]:
    """The ports of the masters that hold these tasks', dead letters' or destinations' partitions now."""
    layout = keys.Layout.of(PARTITIONS)
    slots = {key_slot((layout.for_id(i).tag or "").encode()) for i in ids}
    return {cluster.master_for_slot(slot).port for slot in slots}


def submit(api: Api, tenant: str, kind: str, input: Any, **body: Any) -> dict[str, Any]:
    """Submit as ``tenant``, with these extra fields of the submission body (``webhook`` a URL or an object)."""
    if isinstance(body.get("webhook"), str):
        body["webhook"] = {"url": body["webhook"]}
    return api.submit(kind, input, key=key_of(tenant), body=body)


def wait_ended(api: Api, task_ids: Sequence[str], *, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Every one of these tasks, once all have ended (read with the admin token)."""

    def ended() -> dict[str, dict[str, Any]] | None:
        tasks = {t: api.task(t, ADMIN) for t in task_ids}
        return tasks if all(t["status"] in ("succeeded", "failed", "cancelled") for t in tasks.values()) else None

    return dict(wait_until(ended, timeout_s=timeout_s, interval_s=0.2, message=f"{len(task_ids)} tasks to end"))


def walk(api: Api, path: str, *, key: str = ADMIN, **params: Any) -> list[dict[str, Any]]:
    """Every page of a list (``items`` and ``next_cursor``); fails on a list without an end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        response = api.get(path, key=key, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError(f"{path} never ended with next_cursor null")


def types_of(events: Sequence[Mapping[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def seqs(events: Sequence[Mapping[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def follow(
    ws: WsClient,
    events: dict[str, list[dict[str, Any]]],
    *,
    until: Callable[[], bool],
    ack: bool,
    timeout_s: float = 30.0,
) -> dict[str, dict[str, Any]]:
    """Read one socket's frames, of the tasks that ``events`` holds a list for, into those lists (acking each event
    when ``ack``) until ``until()``; the ``subscribed`` frames that came meanwhile, by task."""
    subscribed: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while not until():
        frame = ws.recv(max(0.0, deadline - time.monotonic()))
        if frame["type"] == "subscribed":
            assert frame["task_id"] not in subscribed, frame
            subscribed[frame["task_id"]] = frame
        elif frame["type"] == "event" and frame["event"]["task_id"] in events:
            events[frame["event"]["task_id"]].append(frame["event"])
            if ack:
                ws.send({"type": "ack", "event_id": frame["event"]["id"]})
        else:
            raise AssertionError(f"an unexpected frame: {frame}")
    return subscribed


def ended(events: Sequence[Mapping[str, Any]]) -> bool:
    return bool(events) and events[-1]["type"] in FINAL


def test_tasks_of_many_destinations_spread_over_the_masters_and_each_webhook_arrives_once(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, receiver: Receiver
) -> None:
    relay = on_cluster()
    api = relay.client
    submitted: list[str] = []
    for i in range(48):
        tenant = TENANTS[i % len(TENANTS)]
        url = receiver.url(f"/hook/{i % 5}")
        body: dict[str, Any] = {"kind": "echo", "input": {"i": i}, "webhook": {"url": url}}
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
    on_cluster: Callable[..., ClusterRelay], receiver: Receiver
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


# 1. Cancel.


def cancel(api: Api, task_id: str, key: str) -> dict[str, Any]:
    response = api.post(f"/v1/tasks/{task_id}/cancel", key=key)
    assert response.status_code == 202, response.text
    return dict(response.json())


def deliveries(api: Api, task_id: str) -> set[tuple[str, str]]:
    response = api.get(f"/v1/tasks/{task_id}/deliveries", key=ADMIN)
    assert response.status_code == 200, response.text
    return {(a["channel"], a["outcome"]) for a in response.json()["attempts"]}


def settled_by_ack(api: Api, task_id: str) -> bool:
    """The task's push was acked and its webhook skipped for it."""
    return {("websocket", "acked"), ("webhook", "skipped")} <= deliveries(api, task_id)


def test_cancel_on_the_cluster_running_queued_and_scheduled_tasks_end_cancelled_once(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, receiver: Receiver
) -> None:
    # Two threads: two running tasks hold them and whatever comes after waits, queued.
    relay = on_cluster(worker_args=("--processes", "1", "--threads", "2"))
    api = relay.client
    followed = submit(api, "t0", "sleep", {"seconds": 60}, webhook=receiver.url("/followed"), websocket=True)
    unfollowed = submit(api, "t1", "sleep", {"seconds": 60}, webhook=receiver.url("/cancelled"))
    ws = WsClient(relay.api.url)
    try:
        ws.subscribe(followed)
        wait_until(
            lambda: {api.task(t["id"], ADMIN)["status"] for t in (followed, unfollowed)} == {"running"},
            message="both sleeps to run",
        )
        # Behind them, queued and scheduled tasks of many tenants (their destinations, so their partitions, differ);
        # one of them followed by the socket too.
        queued = [submit(api, t, "echo", {"never": t}, webhook=receiver.url("/cancelled")) for t in TENANTS[2:9]]
        queued.append(submit(api, "acme", "echo", "never", webhook=receiver.url("/followed"), websocket=True))
        ws.subscribe(queued[-1])
        scheduled = [
            submit(api, t, "echo", {"never": t}, webhook=receiver.url("/cancelled"), delay_s=30) for t in TENANTS[9:]
        ]
        assert {api.task(t["id"], ADMIN)["status"] for t in queued} == {"queued"}
        assert {api.task(t["id"], ADMIN)["status"] for t in scheduled} == {"scheduled"}
        running = [followed["id"], unfollowed["id"]]
        waiting = [t["id"] for t in queued + scheduled]
        every = running + waiting
        print(f"cancel: tasks on masters {sorted(masters_of(cluster, every))}")

        # Each by its owner; the running ones by the operator.
        owner = dict(zip(waiting, [*TENANTS[2:9], "acme", *TENANTS[9:]], strict=True))
        answers = [cancel(api, task_id, key_of(owner[task_id])) for task_id in waiting]
        answers += [cancel(api, task_id, ADMIN) for task_id in running]

        assert [(a["status"], a["finished_at"] is not None) for a in answers] == [("cancelled", True)] * len(every)
        # The socket gets both followed tasks' final events (written by the API, pushed by whichever node holds
        # the socket), and acks them.
        pushed: dict[str, list[dict[str, Any]]] = {followed["id"]: [], queued[-1]["id"]: []}
        follow(ws, pushed, until=lambda: all(map(ended, pushed.values())), ack=True)
        for events in pushed.values():
            assert (events[-1]["type"], events[-1]["data"]) == ("task.cancelled", {"status": "cancelled"})
        assert types_of(pushed[queued[-1]["id"]]) == ["task.cancelled"]

        # Each running task's run is cancelled on the worker within a few seconds.
        def dropped(task_id: str) -> bool:
            said = relay.worker.output()
            return (
                f"task {task_id}: task {task_id} has ended; its run is cancelled" in said
                or f"task {task_id}: this run lost its lease" in said
            )

        for task_id in running:
            wait_until(
                partial(dropped, task_id),
                timeout_s=15,
                message=f"the worker to drop the cancelled run of {task_id}",
            )
        # Every task the socket does not follow gets a webhook that says cancelled, once.
        unacked = [t for t in every if t not in (followed["id"], queued[-1]["id"])]
        hooks = receiver.wait_for("/cancelled", len(unacked), timeout_s=30)
        assert sorted(h.json()["task_id"] for h in hooks) == sorted(unacked)
        assert all((h.json()["type"], h.json()["data"]) == ("task.cancelled", {"status": "cancelled"}) for h in hooks)
        # The threads are free again: the queued messages are dropped (their tasks ended), later work runs.
        later = submit(api, "acme", "echo", "after")
        assert api.wait_task(later["id"], timeout_s=30)["status"] == "succeeded"

        outcome = count_outcome(api, unacked, receiver=receiver, path="/cancelled", name="cancel, webhooks", key=ADMIN)
        assert (outcome.accepted, outcome.cancelled, outcome.lost) == (len(unacked), len(unacked), 0), outcome
        assert (outcome.completed, outcome.failed, outcome.not_ended_once) == (0, 0, 0), outcome
        assert (outcome.webhooks_missing, outcome.webhooks_duplicated) == (0, 0), outcome
        for task_id in waiting:
            kept = api.task(task_id, ADMIN)
            assert (kept["status"], kept["started_at"], kept["result"]) == ("cancelled", None, None)
            assert types_of(task_events(api, task_id, ADMIN)) == ["task.cancelled"]
        for task_id in running:
            kept = api.task(task_id, ADMIN)
            assert (kept["status"], kept["result"]) == ("cancelled", None)
            events = task_events(api, task_id, ADMIN)
            assert types_of(events)[-1] == "task.cancelled"
            assert "task.completed" not in types_of(events)
            assert seqs(events) == list(range(1, len(events) + 1))
        # The followed ones: the acked push settled each, so no webhook went out.
        for task_id in (followed["id"], queued[-1]["id"]):
            wait_until(
                partial(settled_by_ack, api, task_id),
                message="the ack to settle the webhook",
            )
            assert ("webhook", "delivered") not in deliveries(api, task_id)
        assert receiver.on("/followed") == []
        assert all(("webhook", "delivered") in deliveries(api, t) for t in unacked)
    finally:
        ws.close()


# 2. Scheduled and retried work.


def started_after(task: Mapping[str, Any], moment: str) -> bool:
    return datetime.fromisoformat(str(task["started_at"])) >= datetime.fromisoformat(moment)


def test_scheduled_tasks_run_once_when_due_and_retried_work_retries_on_the_cluster(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, receiver: Receiver
) -> None:
    relay = on_cluster(**TEST_KINDS)
    api = relay.client
    run_at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    delayed = [submit(api, t, "echo", {"delay": t}, webhook=receiver.url("/later"), delay_s=2) for t in TENANTS[:6]]
    at_time = [submit(api, t, "echo", {"at": t}, webhook=receiver.url("/later"), run_at=run_at) for t in TENANTS[6:]]
    plain = [submit(api, "acme", "echo", {"plain": n}, delay_s=2) for n in range(4)]  # no webhook: any partition
    # A kind that fails twice, then succeeds: each retry is scheduled, promoted by whichever worker's share holds it.
    with_retrying = {"events": ["task.retrying", *FINAL]}
    flaky = [
        submit(api, t, "flaky", {"failures": 2}, webhook={"url": receiver.url("/flaky"), **with_retrying})
        for t in TENANTS[::3]
    ]
    # One that fails every time: retried max_retries times, then it ends failed.
    hopeless = [submit(api, t, "flaky", {"failures": 10}, webhook=receiver.url("/hopeless")) for t in TENANTS[1::4]]
    sync_retry = [submit(api, t, "flaky_error", {"failures": 1}) for t in TENANTS[2::5]]
    scheduled = delayed + at_time + plain
    every = [t["id"] for t in scheduled + flaky + hopeless + sync_retry]
    print(f"scheduled and retried: tasks on masters {sorted(masters_of(cluster, every))}")

    assert {t["status"] for t in scheduled} == {"scheduled"}
    assert all(t["run_at"] is not None for t in scheduled)
    assert {api.task(t["id"], ADMIN)["status"] for t in scheduled} == {"scheduled"}

    ended = wait_ended(api, every, timeout_s=40)

    # Scheduled: each ran once, never before its time; one final event and one webhook each.
    for task in scheduled:
        done = ended[task["id"]]
        assert done["status"] == "succeeded", done
        assert done["result"] == task["input"]
        assert started_after(done, task["run_at"]), (done["started_at"], task["run_at"])
        assert types_of(task_events(api, task["id"], ADMIN)) == ["task.completed"]
    for task in at_time:
        assert datetime.fromisoformat(task["run_at"]) == datetime.fromisoformat(run_at)
    # ... and soon after it: every partition's schedule is promoted by some worker each second or so.
    late_s = max(
        (datetime.fromisoformat(ended[t["id"]]["started_at"]) - datetime.fromisoformat(t["run_at"])).total_seconds()
        for t in scheduled
    )
    print(f"scheduled: {len(scheduled)} ran, at most {late_s:.2f} s after their time")
    assert late_s < 10
    hooks = receiver.wait_for("/later", len(delayed + at_time))
    outcome = count_outcome(
        api, [t["id"] for t in delayed + at_time], receiver=receiver, path="/later", name="scheduled", key=ADMIN
    )
    outcome.assert_every_task_completed_once(len(delayed + at_time))
    assert outcome.webhooks_duplicated == 0, outcome
    assert len(hooks) == len(delayed + at_time)
    count_outcome(
        api, [t["id"] for t in plain], name="scheduled, no webhook", key=ADMIN
    ).assert_every_task_completed_once(len(plain))

    # Retried: two task.retrying events, then the third attempt succeeds; its webhooks come in seq order.
    for task in flaky:
        done = ended[task["id"]]
        assert (done["status"], done["result"], done["attempt"]) == ("succeeded", {"attempts": 3}, 3), done
        events = task_events(api, task["id"], ADMIN)
        assert seqs(events) == list(range(1, len(events) + 1))
        assert [t for t in types_of(events) if t != "task.progress"] == ["task.retrying"] * 2 + ["task.completed"]
        retries = [(n, e) for n, e in enumerate(events) if e["type"] == "task.retrying"]
        assert [e["data"]["attempt"] for _, e in retries] == [2, 3]  # the attempt it waits for
        assert retries[0][1]["data"]["error"] == {"type": "Retry", "message": "attempt 1 failed on purpose"}
        for n, retry in retries:  # never early: the next attempt's first event comes at its run_at or later
            assert datetime.fromisoformat(events[n + 1]["created_at"]) >= datetime.fromisoformat(
                retry["data"]["run_at"]
            )
    flaky_hooks = wait_until(
        lambda: (h := receiver.on("/flaky")) and len(h) >= 3 * len(flaky) and h,
        message="every retrying and completed webhook of the flaky tasks",
    )
    for task in flaky:
        mine = [h.json() for h in flaky_hooks if h.json()["task_id"] == task["id"]]
        assert types_of(mine) == ["task.retrying", "task.retrying", "task.completed"], mine
        assert seqs(mine) == sorted(seqs(mine))
    outcome = count_outcome(api, [t["id"] for t in flaky], receiver=receiver, path="/flaky", name="retried", key=ADMIN)
    outcome.assert_every_task_completed_once(len(flaky))
    for task in sync_retry:
        done = ended[task["id"]]
        assert (done["status"], done["result"], done["attempt"]) == ("succeeded", {"attempts": 2}, 2), done

    # Retries run out: max_retries (3) retries, then failed, once.
    for task in hopeless:
        done = ended[task["id"]]
        assert (done["status"], done["attempt"]) == ("failed", 4), done
        kinds = [t for t in types_of(task_events(api, task["id"], ADMIN)) if t != "task.progress"]
        assert kinds == ["task.retrying"] * 3 + ["task.failed"]
    outcome = count_outcome(
        api, [t["id"] for t in hopeless], receiver=receiver, path="/hopeless", name="retries spent", key=ADMIN
    )
    assert (outcome.accepted, outcome.failed, outcome.lost, outcome.not_ended_once) == (
        len(hopeless),
        len(hopeless),
        0,
        0,
    )
    assert (outcome.webhooks_missing, outcome.webhooks_duplicated) == (0, 0), outcome


# 3. Dead letters and bulk replay.

RETRY_SCHEDULE = (0.2, 0.4, 0.6)  # RELAY_RETRY_SCHEDULE of the test settings


def replay(api: Api, body: Mapping[str, Any], key: str = ADMIN) -> dict[str, Any]:
    response = api.post("/v1/dead-letters/replay", json=dict(body), key=key)
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_dead_letters_of_many_tenants_list_with_cursors_and_a_bulk_replay_delivers_each_once(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, receiver: Receiver
) -> None:
    relay = on_cluster()
    api = relay.client
    receiver.script("/gone", 410)
    receiver.script("/down", 500)
    # Every tenant, so every tenant's destination (twelve, over the partitions): one endpoint gone, one down.
    gone = [submit(api, t, "echo", {"gone": t}, webhook=receiver.url("/gone")) for t in TENANTS]
    down = [submit(api, t, "echo", {"down": t}, webhook=receiver.url("/down")) for t in TENANTS]
    submitted = {t["id"]: tenant for t, tenant in zip(gone + down, TENANTS + TENANTS, strict=True)}
    total = len(submitted)

    # The operator's list, five a page, holds every one once, newest first across the partitions.
    listed = wait_until(
        lambda: (items := walk(api, "/v1/dead-letters", limit=5)) and len(items) >= total and items,
        timeout_s=40,
        interval_s=0.5,
        message=f"{total} dead letters",
    )
    print(f"dead letters on masters {sorted(masters_of(cluster, [d['id'] for d in listed]))}")
    assert len(listed) == total
    assert len({d["id"] for d in listed}) == total  # no page repeats another's
    assert sorted(d["task_id"] for d in listed) == sorted(submitted)
    assert [d["dead_at"] for d in listed] == sorted((d["dead_at"] for d in listed), reverse=True)
    by_task = {d["task_id"]: d for d in listed}
    for task in gone:
        dead = by_task[task["id"]]
        assert (dead["reason"], dead["attempts"], dead["last_status_code"]) == ("endpoint_gone", 1, 410)
    for task in down:
        dead = by_task[task["id"]]
        assert (dead["reason"], dead["attempts"]) == ("retries_exhausted", 1 + len(RETRY_SCHEDULE))
        assert dead["last_status_code"] == 500
    assert all(by_task[t]["tenant"] == tenant for t, tenant in submitted.items())
    # Filters and each tenant's own view page through the partitions too.
    assert len(walk(api, "/v1/dead-letters", limit=3, reason="endpoint_gone")) == len(gone)
    assert len(walk(api, "/v1/dead-letters", limit=3, reason="retries_exhausted")) == len(down)
    for tenant in TENANTS:
        own = walk(api, "/v1/dead-letters", key=key_of(tenant), limit=1)
        assert sorted(d["task_id"] for d in own) == sorted(t for t, who in submitted.items() if who == tenant)
        assert [d["id"] for d in walk(api, "/v1/dead-letters", limit=1, tenant=tenant)] == [d["id"] for d in own]

    # The dead letters' times: since (inclusive) and until (exclusive) split the list, across the partitions.
    times = sorted({datetime.fromisoformat(d["dead_at"]) for d in listed})
    middle = times[len(times) // 2 - 1] + (times[len(times) // 2] - times[len(times) // 2 - 1]) / 2
    newer = walk(api, "/v1/dead-letters", limit=4, since=middle.isoformat())
    older = walk(api, "/v1/dead-letters", limit=4, until=middle.isoformat())
    assert [d["id"] for d in newer + older] == [d["id"] for d in listed]
    assert all(datetime.fromisoformat(d["dead_at"]) > middle for d in newer)
    # Each tenant's figures: its two dead letters by reason, its failed attempts (one 410, then four 500s).
    for tenant in TENANTS:
        figures = api.get("/v1/stats", key=key_of(tenant)).json()
        assert figures["dead_letters"]["stored"] == 2, (tenant, figures["dead_letters"])
        reasons = figures["dead_letters"]["by_reason"]
        assert (reasons["endpoint_gone"], reasons["retries_exhausted"]) == (1, 1), (tenant, reasons)
        assert figures["deliveries"]["webhook"]["failed"] == 2 + len(RETRY_SCHEDULE), (tenant, figures["deliveries"])

    # Dry runs count and send nothing.
    sent_before = len(receiver.received)
    assert replay(api, {"dry_run": True}) == {"matched": total, "replayed": 0}
    assert replay(api, {"reason": "endpoint_gone", "dry_run": True}) == {"matched": len(gone), "replayed": 0}
    assert replay(api, {"tenant": "t3", "dry_run": True}) == {"matched": 2, "replayed": 0}
    assert replay(api, {"dry_run": True}, key=key_of("t7")) == {"matched": 2, "replayed": 0}
    assert len(receiver.received) == sent_before
    arrived_before = Counter(h.headers["webhook-id"] for h in receiver.received)

    # One letter is deleted by its owner: it is never sent again.
    deleted = by_task[gone[-1]["id"]]
    path = f"/v1/dead-letters/{deleted['id']}"
    assert api.delete(path, key=key_of("globex")).status_code == 404  # another tenant's: not there for it
    assert api.delete(path, key=key_of(deleted["tenant"])).status_code == 204
    assert api.get(path, key=ADMIN).status_code == 404
    assert deleted["id"] not in {d["id"] for d in walk(api, "/v1/dead-letters", limit=10)}

    # The receiver is fixed. One letter is replayed on its own by its owner, then the rest in bulk.
    receiver.script("/gone", 200)
    receiver.script("/down", 200)
    alone = by_task[down[-1]["id"]]
    answer = api.post(f"/v1/dead-letters/{alone['id']}/replay", key=key_of(alone["tenant"]))
    assert (answer.status_code, answer.json()) == (202, {"replayed": 1})
    wait_until(
        lambda: api.get(f"/v1/dead-letters/{alone['id']}", key=ADMIN).status_code == 404,
        message="the replayed letter delivered and gone",
    )
    assert replay(api, {"dry_run": False}) == {"matched": total - 2, "replayed": total - 2}

    wait_until(
        lambda: walk(api, "/v1/dead-letters", limit=50) == [],
        timeout_s=30,
        interval_s=0.3,
        message="every replayed dead letter to leave the store",
    )
    # Settled: nothing owed or in flight at any destination, so nothing more can arrive.
    wait_until(
        lambda: all(d["owed"] == 0 and d["in_flight"] == 0 for d in walk(api, "/v1/destinations", limit=50)),
        message="every destination settled",
    )
    arrived = Counter(h.headers["webhook-id"] for h in receiver.received)
    after = arrived - arrived_before
    events = {d["event"]["id"] for d in listed if d["id"] != deleted["id"]}
    lost = sorted(events - set(after))
    duplicated = sum(n - 1 for n in after.values() if n > 1)
    print(
        f"replay: dead {total}, deleted 1, replayed {total - 1}, delivered {len(after)}, lost {len(lost)}, "
        f"duplicated {duplicated}"
    )
    assert (lost, duplicated) == ([], 0)
    assert set(after) == events  # and the deleted one was not sent
    for task_id in submitted:
        outcomes = [a["outcome"] for a in webhook_attempts(api, task_id, ADMIN)]
        if task_id == deleted["task_id"]:
            assert outcomes == ["failed"]
            continue
        assert outcomes[-1] == "delivered", (task_id, outcomes)
        assert outcomes.count("delivered") == 1, (task_id, outcomes)
    stats = api.get("/v1/stats", key=ADMIN).json()
    assert stats["dead_letters"]["stored"] == 0
    assert stats["dead_letters"]["by_reason"]["endpoint_gone"] == len(gone)
    assert stats["dead_letters"]["by_reason"]["retries_exhausted"] == len(down)


# 4. Destinations.


def origin_of(receiver: Receiver) -> str:
    return receiver.url("").rstrip("/")


def destination(api: Api, tenant: str, origin: str) -> dict[str, Any]:
    """The destination of ``tenant``'s webhooks to ``origin``, as the operator's list shows it."""
    return dict(
        wait_until(
            lambda: next(
                (d for d in walk(api, "/v1/destinations", limit=50, tenant=tenant) if d["origin"] == origin), None
            ),
            message=f"the destination of {tenant} to {origin}",
        )
    )


def on_another_master(cluster: LocalCluster, origins: Sequence[str]) -> list[str]:
    """A tenant per origin such that their destinations sit on different masters (as far as there are masters)."""
    chosen: list[str] = []
    taken: set[int] = set()
    for origin in origins:
        for tenant in TENANTS:
            if tenant in chosen:
                continue
            (master,) = masters_of(cluster, [destination_id(tenant, origin)])
            if master not in taken or len(taken) == len(cluster.ports):
                chosen.append(tenant)
                taken.add(master)
                break
    return chosen


def delivered_once(api: Api, task_ids: Sequence[str]) -> list[str]:
    """The tasks whose webhook attempts hold exactly one ``delivered``."""
    return [t for t in task_ids if [a["outcome"] for a in webhook_attempts(api, t, ADMIN)].count("delivered") == 1]


def test_destinations_on_the_cluster_caps_breaker_and_pause(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster
) -> None:
    with (
        run_receiver() as ops,
        run_receiver() as slow_a,
        run_receiver() as slow_b,
        run_receiver() as down,
        run_receiver() as held,
    ):
        relay = on_cluster(
            worker_args=("--processes", "2", "--threads", "4"),  # a cap holds across worker processes
            RELAY_BREAKER_THRESHOLD="3",
            RELAY_BREAKER_PROBE_S="1",
            # A failed probe must not spend a retry of the schedule; held webhooks dead-letter only after 301 s.
            RELAY_RETRY_SCHEDULE="1,300",
            RELAY_OPS_WEBHOOK_URL=ops.url("/ops"),
        )
        api = relay.client

        # Caps: max_in_flight 1 on two slow receivers, their destinations on different masters.
        tenant_a, tenant_b = on_another_master(cluster, [origin_of(slow_a), origin_of(slow_b)])
        capped = {}
        for tenant, slow in ((tenant_a, slow_a), (tenant_b, slow_b)):
            submit(api, tenant, "echo", "first", webhook=slow.url("/capped"))
            slow.wait_for("/capped", 1)
            dst = destination(api, tenant, origin_of(slow))
            patched = api.request(
                "PATCH", f"/v1/destinations/{dst['id']}", key=key_of(tenant), json={"max_in_flight": 1}
            )
            assert patched.status_code == 200, patched.text
            assert patched.json()["max_in_flight"] == 1
            capped[tenant] = dst["id"]
            slow.delay("/capped", 0.3)
            slow.peak_open_requests = 0
        print(f"capped destinations on masters {sorted(masters_of(cluster, list(capped.values())))}")
        assert len(masters_of(cluster, list(capped.values()))) == 2
        per_tenant = 8
        tasks: dict[str, list[str]] = {tenant_a: [], tenant_b: []}
        for n in range(per_tenant):
            for tenant, slow in ((tenant_a, slow_a), (tenant_b, slow_b)):
                tasks[tenant].append(submit(api, tenant, "echo", n, webhook=slow.url("/capped"))["id"])
        for tenant, slow in ((tenant_a, slow_a), (tenant_b, slow_b)):
            hooks = slow.wait_for("/capped", 1 + per_tenant, timeout_s=30)[1:]
            assert slow.peak_open_requests == 1, (tenant, slow.peak_open_requests)  # never more than one at once
            assert sorted(h.json()["task_id"] for h in hooks) == sorted(tasks[tenant])
            assert len({h.headers["webhook-id"] for h in hooks}) == per_tenant
            outcome = count_outcome(
                api, tasks[tenant], receiver=slow, path="/capped", name=f"capped, {tenant}", key=ADMIN
            )
            outcome.assert_every_task_completed_once(per_tenant)
            assert outcome.webhooks_duplicated == 0, outcome
        # The cap is per destination: the two ran side by side, not one after the other.
        a_times = [h.at for h in slow_a.on("/capped")[1:]]
        b_times = [h.at for h in slow_b.on("/capped")[1:]]
        assert min(max(a_times), max(b_times)) > max(min(a_times), min(b_times))

        # The breaker: a receiver that answers 500 opens the destination; only probes go out; a 2xx probe closes it.
        origin = origin_of(down)
        submit(api, "globex", "echo", "first", webhook=down.url("/down"))
        down.wait_for("/down", 1)
        dst = destination(api, "globex", origin)
        assert api.post(f"/v1/destinations/{dst['id']}/pause", key=ADMIN).status_code == 200
        broken = [submit(api, "globex", "echo", n, webhook=down.url("/down"))["id"] for n in range(6)]
        wait_until(lambda: destination(api, "globex", origin)["owed"] == len(broken), message="six webhooks owed")
        down.script("/down", 500)
        down.received.clear()
        assert api.post(f"/v1/destinations/{dst['id']}/resume", key=ADMIN).status_code == 200
        opened = wait_until(
            lambda: (d := destination(api, "globex", origin)) and d["state"] == "open" and d,
            message="the destination to open",
        )
        first_wave = down.wait_for("/down", len(broken))
        assert len(first_wave) == len(broken)
        probes = wait_until(
            lambda: (r := down.on("/down")[len(broken) :]) and len(r) >= 2 and r, timeout_s=20, message="two probes"
        )
        assert len({p.headers["webhook-id"] for p in probes}) == 1  # the oldest owed webhook, each time
        assert probes[1].at - probes[0].at >= 1.9  # the wait doubles from RELAY_BREAKER_PROBE_S
        assert opened["owed"] == len(broken)
        assert opened["consecutive_failures"] >= 3
        metrics = api.get("/metrics", key=None).text
        assert 'relay_destinations{state="open"} 1.0' in metrics
        down.script("/down", 200)
        wait_until(
            lambda: len(delivered_once(api, broken)) == len(broken),
            timeout_s=30,
            interval_s=0.3,
            message="every held webhook delivered once",
        )
        healthy = destination(api, "globex", origin)
        assert (healthy["state"], healthy["owed"]) == ("healthy", 0)
        assert walk(api, "/v1/dead-letters") == []
        outcome = count_outcome(api, broken, receiver=down, path="/down", name="breaker", key=ADMIN)
        assert (outcome.accepted, outcome.completed, outcome.lost, outcome.webhooks_missing) == (6, 6, 0, 0), outcome
        events = ops.wait_for("/ops", 2, timeout_s=20)
        secret = api.get("/v1/ops/signing-secret", key=ADMIN).json()["secret"]
        verified = [Webhook(secret).verify(e.body, e.headers) for e in events]
        assert [v["type"] for v in verified] == ["destination.opened", "destination.recovered"]
        assert [v["data"]["id"] for v in verified] == [dst["id"]] * 2

        # Pause holds every webhook of one destination (and no other's); resume drains them, each once.
        origin = origin_of(held)
        submit(api, "t5", "echo", "first", webhook=held.url("/p"))
        held.wait_for("/p", 1)
        dst = destination(api, "t5", origin)
        paused = api.post(f"/v1/destinations/{dst['id']}/pause", key=key_of("t5"))
        assert (paused.status_code, paused.json()["state"]) == (200, "paused")
        waiting = [submit(api, "t5", "echo", n, webhook=held.url("/p"))["id"] for n in range(8)]
        others = [submit(api, "t6", "echo", n, webhook=held.url("/other"))["id"] for n in range(4)]
        held.wait_for("/other", len(others))  # another tenant's destination on the same receiver: not held
        wait_ended(api, waiting)
        wait_until(lambda: destination(api, "t5", origin)["owed"] == len(waiting), message="eight webhooks held")
        kept = api.get(f"/v1/destinations/{dst['id']}", key=key_of("t5")).json()
        assert (kept["state"], kept["owed"], kept["in_flight"]) == ("paused", len(waiting), 0)
        assert len(held.on("/p")) == 1
        resumed = api.post(f"/v1/destinations/{dst['id']}/resume", key=ADMIN)
        assert (resumed.status_code, resumed.json()["state"]) == (200, "healthy")
        hooks = held.wait_for("/p", 1 + len(waiting))[1:]
        assert sorted(h.json()["task_id"] for h in hooks) == sorted(waiting)
        outcome = count_outcome(api, waiting, receiver=held, path="/p", name="paused, resumed", key=ADMIN)
        outcome.assert_every_task_completed_once(len(waiting))
        assert outcome.webhooks_duplicated == 0, outcome


# 5. Streams resumed across two API nodes.


BURST = 1000
BURST_MOVED_AFTER = 50  # events of the burst read on the first node


def test_websockets_and_streams_resume_on_another_api_node_with_nothing_missed_or_doubled(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, start_relay: StartRelay
) -> None:
    relay = on_cluster(RELAY_WS_ACK_TIMEOUT="3", **TEST_KINDS)
    api_b = start_relay("api", **relay.settings)  # a second API node on the same cluster
    api = relay.client
    # Tasks of several tenants, without webhooks: anywhere in the cluster. Submitted through API A. Sleeps give an
    # event a second; a burst gives its events as fast as they are written, so that the move from one node to the
    # other happens while they flow.
    sleeps = [submit(api, t, "sleep", {"seconds": 3}, websocket=True) for t in TENANTS[:3]]

    # WebSocket: two events of each sleep on API A, then a burst followed there too until it has given some; the
    # socket drops; API B resumes each from its last seq.
    first = WsClient(relay.api.url)
    second = WsClient(api_b.url)
    try:
        before: dict[str, list[dict[str, Any]]] = {t["id"]: [] for t in sleeps}
        for task in sleeps:
            first.subscribe(task)
        follow(first, before, until=lambda: all(len(events) >= 2 for events in before.values()), ack=True)
        burst = submit(api, TENANTS[3], "burst", {"events": BURST}, websocket=True)
        before[burst["id"]] = []
        first.subscribe(burst)
        follow(first, before, until=lambda: len(before[burst["id"]]) >= BURST_MOVED_AFTER, ack=True)
        first.close()
        followed = [*sleeps, burst]
        ids = [t["id"] for t in followed]
        print(f"streams: tasks on masters {sorted(masters_of(cluster, ids))}")
        after: dict[str, list[dict[str, Any]]] = {t: [] for t in ids}
        for task in followed:
            second.subscribe(task, after_seq=before[task["id"]][-1]["seq"])
        resumed = follow(second, after, until=lambda: all(ended(before[t] + after[t]) for t in ids), ack=True)
    finally:
        first.close()
        second.close()
    logged = {task_id: task_events(api, task_id, ADMIN) for task_id in ids}
    moved = resumed[burst["id"]]
    got = {task_id: seqs(before[task_id] + after[task_id]) for task_id in ids}
    lost = sum(len(set(seqs(logged[t])) - set(got[t])) for t in ids)
    duplicated = sum(len(got[t]) - len(set(got[t])) for t in ids)
    print(
        f"websocket across API nodes: tasks {len(ids)}, events {sum(map(len, logged.values()))}, moved after seqs "
        f"{[before[t][-1]['seq'] for t in ids]} (of {[len(logged[t]) for t in ids]}; the burst {moved['status']} "
        f"at seq {moved['last_seq']} then), lost {lost}, duplicated {duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
    for task_id in ids:
        assert resumed[task_id]["recovered"] is True
        assert got[task_id] == list(range(1, len(got[task_id]) + 1)), task_id
        assert before[task_id] + after[task_id] == logged[task_id]
        assert logged[task_id][-1]["type"] == "task.completed"

    # Server-Sent Events: some events of each on API A (two of a sleep, more of a burst), then the reader stops; API B
    # resumes after Last-Event-ID or after_seq.
    streamed = [submit(api, TENANTS[4], "sleep", {"seconds": 3}), submit(api, TENANTS[5], "burst", {"events": BURST})]
    stream_ids = [t["id"] for t in streamed]
    partial: dict[str, Streamed] = {}

    def read_some(task: Mapping[str, Any], count: int) -> None:
        partial[task["id"]] = stream_task(
            relay.api.url, task["id"], params={"token": task["ws_token"]}, until=lambda s: len(s.messages) >= count
        )

    readers = [
        threading.Thread(target=read_some, args=(task, count), daemon=True)
        for task, count in zip(streamed, (2, BURST_MOVED_AFTER), strict=True)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    assert sorted(partial) == sorted(stream_ids), "a stream on API A gave too few events"
    rest: dict[str, Streamed] = {}
    for n, task in enumerate(streamed):
        last = partial[task["id"]].messages[-1].id
        assert last is not None
        if n % 2:  # as an EventSource reconnects: Last-Event-ID
            params, headers = {"token": task["ws_token"]}, {"Last-Event-ID": last}
        else:
            params, headers = {"token": task["ws_token"], "after_seq": last}, {}
        rest[task["id"]] = stream_task(api_b.url, task["id"], params=params, headers=headers)
    logged = {task_id: task_events(api, task_id, ADMIN) for task_id in stream_ids}
    got = {task_id: seqs(partial[task_id].events + rest[task_id].events) for task_id in stream_ids}
    lost = sum(len(set(seqs(logged[t])) - set(got[t])) for t in stream_ids)
    duplicated = sum(len(got[t]) - len(set(got[t])) for t in stream_ids)
    print(
        f"streams across API nodes: tasks {len(stream_ids)}, events {sum(map(len, logged.values()))}, moved after "
        f"seqs {[partial[t].messages[-1].id for t in stream_ids]}, lost {lost}, duplicated {duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
    for task_id in stream_ids:
        before_s, after_s = partial[task_id], rest[task_id]
        assert after_s.status_code == 200, after_s.body
        assert after_s.subscribed is not None
        assert after_s.subscribed["recovered"] is True
        assert after_s.ended
        assert got[task_id] == seqs(logged[task_id]) == list(range(1, len(logged[task_id]) + 1))
        assert before_s.events + after_s.events == logged[task_id]
        assert [m.id for m in after_s.messages] == [str(e["seq"]) for e in after_s.events]
        assert after_s.events[-1]["type"] == "task.completed"


# 6. Figures and lists across the partitions.


def test_stats_and_lists_of_each_tenant_count_what_it_submitted_across_the_partitions(
    on_cluster: Callable[..., ClusterRelay], cluster: LocalCluster, receiver: Receiver
) -> None:
    relay = on_cluster()
    api = relay.client
    # Ready, the store's room read from its masters (and shown in /metrics).
    ready = api.get("/ready", key=None)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "redis": "ok", "broker": "ok", "store": "ok"})
    gauges = dict(
        line.split() for line in api.get("/metrics", key=None).text.splitlines() if line.startswith("relay_store_")
    )
    assert float(gauges["relay_store_used_memory_bytes"]) > 0, gauges
    assert float(gauges['relay_store_refusing{reason="full"}']) == 0, gauges

    def shown(key: str, **params: str) -> dict[str, Any]:
        response = api.get("/v1/stats", key=key, params=params)
        assert response.status_code == 200, response.text
        figures = response.json()
        return {
            "tasks": figures["tasks"],
            "webhooks_delivered": figures["deliveries"]["webhook"]["delivered"],
            "latency_delivered": figures["latency"]["delivered"],
            "dead_letters": figures["dead_letters"]["stored"],
        }

    # A first look keeps the figures of now: the latency is of the deliveries after it.
    for key in (ADMIN, *map(key_of, TENANTS)):
        assert shown(key)["tasks"]["submitted"] == 0
    hook = receiver.url("/s")
    mine: dict[str, dict[str, list[str]]] = {}
    for k, tenant in enumerate(TENANTS):
        made: dict[str, list[str]] = {"succeeded": [], "failed": [], "cancelled": [], "scheduled": []}
        made["succeeded"] += [submit(api, tenant, "echo", n, webhook=hook)["id"] for n in range(1 + k % 3)]
        made["succeeded"] += [submit(api, tenant, "echo", n)["id"] for n in range(k % 2)]  # any partition
        made["failed"] += [
            submit(api, tenant, "fail", {"message": "no"}, webhook=hook)["id"] for _ in range(k % 4 == 0)
        ]
        made["scheduled"] += [submit(api, tenant, "echo", "later", delay_s=600)["id"] for _ in range(k % 5 == 0)]
        for _ in range(k % 3 == 1):
            task = submit(api, tenant, "echo", "never", webhook=hook, delay_s=600)
            assert api.post(f"/v1/tasks/{task['id']}/cancel", key=key_of(tenant)).status_code == 202
            made["cancelled"].append(task["id"])
        mine[tenant] = made
    every = [t for made in mine.values() for ids in made.values() for t in ids]
    ended = [t for made in mine.values() for s in ("succeeded", "failed", "cancelled") for t in made[s]]
    with_hook = sum(
        1 + k % 3 + (k % 4 == 0) + (k % 3 == 1) for k in range(len(TENANTS))
    )  # each ended task with a webhook
    print(f"stats: {len(every)} tasks on masters {sorted(masters_of(cluster, every))}")
    done = wait_ended(api, ended)
    for made in mine.values():
        for status in ("succeeded", "failed", "cancelled"):
            assert {done[t]["status"] for t in made[status]} <= {status}
    receiver.wait_for("/s", with_hook, timeout_s=30)

    def expected(made: Mapping[str, list[str]]) -> dict[str, Any]:
        submitted = sum(len(ids) for ids in made.values())
        return {
            "tasks": {
                "submitted": submitted,
                "scheduled": len(made["scheduled"]),
                "retried": 0,
                "succeeded": len(made["succeeded"]),
                "failed": len(made["failed"]),
                "cancelled": len(made["cancelled"]),
                "open": len(made["scheduled"]),
            },
            "webhooks_delivered": None,
            "latency_delivered": None,
            "dead_letters": 0,
        }

    delivered_of = {
        tenant: len(made["failed"])
        + len(made["cancelled"])
        + sum(done[t]["webhook"] is not None for t in made["succeeded"])
        for tenant, made in mine.items()
    }
    wrong: dict[str, Any] = {}
    for tenant, made in mine.items():
        want = expected(made) | dict.fromkeys(("webhooks_delivered", "latency_delivered"), delivered_of[tenant])
        try:
            wait_until(
                partial(lambda key, want: shown(key) == want, key_of(tenant), want),
                timeout_s=10,
                interval_s=0.5,
            )
        except AssertionError:
            wrong[tenant] = {"expected": want, "shown": shown(key_of(tenant))}
        assert shown(ADMIN, tenant=tenant) == shown(key_of(tenant))
    assert wrong == {}
    total = {
        "submitted": len(every),
        "succeeded": sum(len(m["succeeded"]) for m in mine.values()),
        "failed": sum(len(m["failed"]) for m in mine.values()),
        "cancelled": sum(len(m["cancelled"]) for m in mine.values()),
        "scheduled": sum(len(m["scheduled"]) for m in mine.values()),
    }
    figures = shown(ADMIN)
    assert {name: figures["tasks"][name] for name in total} == total
    assert figures["tasks"]["open"] == total["scheduled"]
    assert figures["webhooks_delivered"] == sum(delivered_of.values()) == with_hook
    assert figures["latency_delivered"] == with_hook

    # Lists: each tenant's pages hold its tasks once, newest first; filters and the operator's view likewise.
    for tenant, made in mine.items():
        listed = walk(api, "/v1/tasks", key=key_of(tenant), limit=2)
        assert sorted(t["id"] for t in listed) == sorted(t for ids in made.values() for t in ids), tenant
        assert [t["created_at"] for t in listed] == sorted((t["created_at"] for t in listed), reverse=True)
        assert [t["id"] for t in walk(api, "/v1/tasks", limit=3, tenant=tenant)] == [t["id"] for t in listed]
        for status, ids in made.items():
            found = walk(api, "/v1/tasks", key=key_of(tenant), status=status, limit=1)
            assert sorted(t["id"] for t in found) == sorted(ids), (tenant, status)
        assert sorted(t["id"] for t in walk(api, "/v1/tasks", key=key_of(tenant), kind="fail")) == made["failed"]
    everything = walk(api, "/v1/tasks", limit=7)
    assert sorted(t["id"] for t in everything) == sorted(every)
    created = [t["created_at"] for t in everything]
    assert created == sorted(created, reverse=True)
    middle = created[len(created) // 2]
    since = walk(api, "/v1/tasks", limit=5, since=middle)
    until = walk(api, "/v1/tasks", limit=5, until=middle)
    assert sorted(t["id"] for t in since + until) == sorted(every)
    assert all(t["created_at"] >= middle for t in since)
    assert all(t["created_at"] < middle for t in until)

    # Destinations: every tenant's one, once, worst first across the partitions.
    origin = origin_of(receiver)
    listed = walk(api, "/v1/destinations", limit=5)
    assert sorted(d["tenant"] for d in listed if d["origin"] == origin) == sorted(TENANTS)
    assert len({d["id"] for d in listed}) == len(listed)
    paused = destination(api, "t4", origin)
    assert api.post(f"/v1/destinations/{paused['id']}/pause", key=ADMIN).status_code == 200
    worst_first = walk(api, "/v1/destinations", limit=5)
    assert worst_first[0]["id"] == paused["id"]
    assert [d["id"] for d in walk(api, "/v1/destinations", state="paused")] == [paused["id"]]
    assert shown(ADMIN)["tasks"]["submitted"] == len(every)
