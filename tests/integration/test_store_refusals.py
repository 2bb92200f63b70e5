"""A store that refuses writes, with real processes: a full Redis (maxmemory, noeviction) and a read-only one.

New work gets a JSON 503 naming the cause (never a 500) and /ready says why; memory stays near maxmemory; the
work accepted before keeps its leases while it waits; and once Redis takes writes again every accepted task
ends exactly once (one final event, one webhook)."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.processes import RedisServer, free_port
from tests.integration.conftest import Relay, StartRelay
from tests.support import Api, Receiver, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Room above a fresh store's memory, and the size of each task's input (as in the field report: 3 MB, 4 KB).
ROOM_BYTES = 3_000_000
INPUT_BYTES = 4096
SUBMIT_FOR_S = 12.0
# Redis may pass maxmemory only by what the steps that run when full write (leases, attempts: bytes per task).
MAX_OVERSHOOT = 0.05
FINAL = {"task.completed", "task.failed", "task.cancelled"}


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> task id
        self.refused: list[httpx.Response] = []
        self.other: list[httpx.Response] = []


def submit_until(base_url: str, tally: Tally, webhook: str, stop: threading.Event, worker: int) -> None:
    with httpx.Client(base_url=base_url, timeout=10, headers={"Authorization": "Bearer key-acme"}) as client:
        n = 0
        while not stop.is_set():
            key = f"w{worker}-{n}"
            body = {"kind": "echo", "input": {"pad": "x" * INPUT_BYTES, "key": key}, "webhook": {"url": webhook}}
            response = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
            with tally.lock:
                if response.status_code == 202:
                    tally.accepted[key] = response.json()["id"]
                elif response.status_code == 503:
                    tally.refused.append(response)
                else:
                    tally.other.append(response)
            if response.status_code == 503:
                time.sleep(0.05)
            n += 1


def check_ended_once(relay: Relay, receiver: Receiver, task_ids: list[str], *, timeout_s: float) -> dict[str, int]:
    wait_until(
        lambda: _count_ended(relay, task_ids) == len(task_ids), timeout_s=timeout_s, message="every accepted task ended"
    )
    finals: Counter[str] = Counter()
    for task_id in task_ids:
        events = relay.client.get(f"/v1/tasks/{task_id}/events").json()["events"]
        finals[task_id] = sum(1 for e in events if e["type"] in FINAL)
    wait_until(lambda: len({r.json()["task_id"] for r in receiver.on("/hook")}) >= len(task_ids), timeout_s=60)
    # Nothing owed to the receiver any more, none in flight: a second webhook of one task, had there been one, has
    # arrived (no event is owed twice at once, and what is owed or in flight is counted until it is answered).
    origin = receiver.url("").rstrip("/")
    wait_until(
        lambda: (
            [
                (d["owed"], d["in_flight"])
                for d in relay.client.get("/v1/destinations", key="admin-token").json()["items"]
                if d["origin"] == origin
            ]
            == [(0, 0)]
        ),
        timeout_s=60,
        message="nothing owed to the receiver",
    )
    hooks = Counter(r.json()["task_id"] for r in receiver.on("/hook"))
    return {
        "ended": sum(1 for t in task_ids if finals[t] >= 1),
        "final_events_twice": sum(1 for t in task_ids if finals[t] > 1),
        "webhooks_missing": sum(1 for t in task_ids if hooks[t] == 0),
        "webhooks_twice": sum(1 for t in task_ids if hooks[t] > 1),
    }


def _count_ended(relay: Relay, task_ids: list[str]) -> int:
    done = 0
    for task_id in task_ids:
        if relay.client.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded":
            done += 1
    return done


def test_a_full_store_refuses_new_work_and_ends_all_accepted_work_once_memory_is_back(
    relay: Relay, redis_server: RedisServer, receiver: Receiver
) -> None:
    admin = redis_server.client()
    try:
        used = int(admin.info("memory")["used_memory"])
        limit = used + ROOM_BYTES
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", limit)
        tally, stop, peak = Tally(), threading.Event(), [0]
        threads = [
            threading.Thread(target=submit_until, args=(relay.api.url, tally, receiver.url(), stop, i))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        try:
            started = time.monotonic()
            while time.monotonic() - started < SUBMIT_FOR_S:
                peak[0] = max(peak[0], int(admin.info("memory")["used_memory"]))
                time.sleep(0.05)
            ready = relay.client.get("/ready", key=None)
            metrics = relay.client.get("/metrics", key=None).text
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        peak[0] = max(peak[0], int(admin.info("memory")["used_memory"]))

        assert tally.other == [], [(r.status_code, r.text[:200]) for r in tally.other]  # no 500, nothing else
        assert tally.accepted
        assert tally.refused
        for response in tally.refused:
            assert response.headers["content-type"].startswith("application/json")
            assert "the store is full" in response.json()["detail"], response.text
            assert int(response.headers["retry-after"]) > 0
        assert ready.status_code == 503
        assert ready.json()["store"].startswith("full"), ready.text
        assert 'relay_store_refusing{reason="full"} 1.0' in metrics
        # The line an alert can use: said at ERROR, with the figures, once per time the store became full.
        full_lines = [line for line in relay.api.output().splitlines() if "store full:" in line]
        assert full_lines, relay.api.output()[-3000:]
        assert all(re.search(r"\bERROR\b", line) for line in full_lines), full_lines
        assert re.search(rf"used_memory [\d.]+ MB of maxmemory {limit / 1_000_000:.1f} MB", full_lines[0]), full_lines
        assert "new work gets 503" in full_lines[0]
        assert peak[0] <= limit * (1 + MAX_OVERSHOOT), (peak[0], limit)

        # A retry of an accepted submission (same key, same body) still gets its task while the store is full.
        key, task_id = next(iter(tally.accepted.items()))
        again = relay.client.post(
            "/v1/tasks",
            json={"kind": "echo", "input": {"pad": "x" * INPUT_BYTES, "key": key}, "webhook": {"url": receiver.url()}},
            headers={"Idempotency-Key": key},
        )
        assert (again.status_code, again.json()["id"]) == (202, task_id)

        admin.config_set("maxmemory", 0)
        counts = check_ended_once(relay, receiver, list(tally.accepted.values()), timeout_s=120)
        print(
            f"accepted {len(tally.accepted)}, refused {len(tally.refused)}, {counts}, peak used_memory {peak[0]} "
            f"of maxmemory {limit}"
        )
        assert counts == {
            "ended": len(tally.accepted),
            "final_events_twice": 0,
            "webhooks_missing": 0,
            "webhooks_twice": 0,
        }
        wait_until(lambda: relay.client.get("/ready", key=None).status_code == 200, timeout_s=10)
        wait_until(lambda: relay.client.post("/v1/tasks", json={"kind": "echo"}).status_code == 202, timeout_s=5)
        # And its end, which an alert can clear on: each "full" is followed by "takes new work again", the last one
        # included. The API writes its log from a thread of its own, so the line may follow the answers by a moment.
        wait_until(lambda: "takes new work again" in relay.api.output(), timeout_s=5)
        said = [line for line in relay.api.output().splitlines() if "store full:" in line or "takes new work" in line]
        turns = ["full" if "store full:" in line else "again" for line in said]
        assert len(turns) >= 2, said
        assert turns == ["full", "again"] * (len(turns) // 2), said
        assert "store takes new work again (it refused it: full)" in said[-1], said
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


@pytest.mark.parametrize("refusal", ["readonly", "noreplicas"])
def test_a_store_that_refuses_writes_answers_503_naming_the_cause_and_loses_nothing(
    relay: Relay, redis_server: RedisServer, receiver: Receiver, refusal: str
) -> None:
    admin = redis_server.client()
    before = [relay.client.submit("sleep", {"seconds": 1}, webhook=receiver.url())["id"] for _ in range(5)]
    try:
        if refusal == "readonly":
            admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that is not there
            cause = "read-only replica"
        else:
            admin.config_set("min-replicas-to-write", 1)
            cause = "replicas"
        time.sleep(1.5)  # the tasks' ends are now refused too

        submit = relay.client.post("/v1/tasks", json={"kind": "echo", "input": 1})
        assert submit.status_code == 503, submit.text
        assert cause in submit.json()["detail"]
        assert "Nothing was stored" in submit.json()["detail"]
        assert int(submit.headers["retry-after"]) > 0
        cancel = relay.client.post(f"/v1/tasks/{before[0]}/cancel")
        assert cancel.status_code == 503, cancel.text
        assert cause in cancel.json()["detail"]
        assert relay.client.get(f"/v1/tasks/{before[1]}").status_code == 200  # reads still answer
        ready = wait_until(lambda: (r := relay.client.get("/ready", key=None)).status_code == 503 and r, timeout_s=5)
        assert cause in ready.json()["store"], ready.text
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.config_set("min-replicas-to-write", 0)
        admin.close()
    counts = check_ended_once(relay, receiver, before, timeout_s=60)
    assert counts == {"ended": 5, "final_events_twice": 0, "webhooks_missing": 0, "webhooks_twice": 0}
    assert "Traceback" not in relay.api.output()
    # The API reads the store's state about once a second: new work is taken again within a few.
    wait_until(lambda: relay.client.post("/v1/tasks", json={"kind": "echo"}).status_code == 202, timeout_s=5)


def test_a_failed_save_misconf_answers_503_naming_the_cause_and_loses_nothing(
    start_relay: StartRelay, receiver: Receiver
) -> None:
    """MISCONF: Redis with save points whose background save failed (its directory gone) refuses every write."""
    base = Path(tempfile.mkdtemp(prefix="relay-misconf-"))
    server = RedisServer(data_dir=base / "data", appendonly=False, log_path=base / "redis.log")
    server.start()
    admin = server.client()
    try:
        api = start_relay("api", RELAY_REDIS_URL=server.url)
        start_relay("worker", RELAY_REDIS_URL=server.url)
        client = Api(api.url)
        before = [client.submit("sleep", {"seconds": 1}, webhook=receiver.url())["id"] for _ in range(3)]
        admin.config_set("save", "3600 1")
        shutil.rmtree(server.dir)
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", timeout_s=10)

        submit = client.post("/v1/tasks", json={"kind": "echo", "input": 1})
        assert submit.status_code == 503, submit.text
        assert "could not save to disk (MISCONF)" in submit.json()["detail"]
        assert int(submit.headers["retry-after"]) > 0
        ready = wait_until(lambda: (r := client.get("/ready", key=None)).status_code == 503 and r, timeout_s=5)
        assert "MISCONF" in ready.json()["store"], ready.text  # GET (the epoch) still answers: the store says why
        time.sleep(1.5)  # the tasks' ends are refused meanwhile

        admin.config_set("save", "")  # writes are taken again
        wait_until(
            lambda: all(client.task(t)["status"] == "succeeded" for t in before), timeout_s=60, message="all ended"
        )
        for task_id in before:
            events = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
            assert sum(1 for e in events if e["type"] in FINAL) == 1
        receiver.wait_for("/hook", len(before))
        assert sorted(r.json()["task_id"] for r in receiver.on("/hook")) == sorted(before)
        assert "Traceback" not in api.output()
        client.close()
    finally:
        admin.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
