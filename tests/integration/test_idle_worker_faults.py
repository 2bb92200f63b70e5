"""An idle worker waits on the queue's wake list (BLPOP) rather than sleeping: Redis frozen, then killed and
restarted while it waits, loses no task (accepted = succeeded, each with one final event; retried submissions keep
their Idempotency-Key, so none is accepted twice), leaves at most one token, and the worker still stops at once."""

from __future__ import annotations

import time

import httpx
import pytest

from service.broker import QUEUE
from service.dramatiq_redis import RelayRedisBroker, wake_key
from tests.conftest import RedisServer
from tests.integration.conftest import Relay
from tests.support import count_outcome, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Long enough that the consumer is idle in its longest wait, at the back-off's cap (100 ms).
IDLE_S = 1.0
FREEZE_S = 4.0
# A stop of an idle worker (its threads and consumer look every 100 ms).
STOP_WITHIN_S = 3.0


def submit(relay: Relay, n: int, prefix: str) -> list[str]:
    """n echo tasks, each retried (same Idempotency-Key) until accepted: Redis may still be coming back."""
    accepted = []
    for i in range(n):
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"{prefix}-{i} never accepted"
            try:
                response = relay.client.post(
                    "/v1/tasks", json={"kind": "echo", "input": {"i": i}}, headers={"Idempotency-Key": f"{prefix}-{i}"}
                )
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 202:
                accepted.append(response.json()["id"])
                break
            time.sleep(0.1)
    return accepted


def statuses(relay: Relay, task_ids: list[str]) -> dict[str, str]:
    out = {}
    for task_id in task_ids:
        try:
            response = relay.client.get(f"/v1/tasks/{task_id}")
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            out[task_id] = response.json()["status"]
    return out


def test_faults_while_the_idle_worker_waits_lose_nothing(relay: Relay, redis_server: RedisServer) -> None:
    wake = wake_key(RelayRedisBroker(url=redis_server.url), QUEUE)  # type: ignore[no-untyped-call]
    client = redis_server.client()
    accepted: list[str] = []
    try:
        time.sleep(IDLE_S)
        accepted += submit(relay, 20, "idle")
        time.sleep(IDLE_S)
        redis_server.freeze()  # while the consumer waits on the wake list
        time.sleep(FREEZE_S)
        redis_server.thaw()
        accepted += submit(relay, 20, "thawed")
        time.sleep(IDLE_S)
        redis_server.kill()  # while it waits again
        time.sleep(IDLE_S)
        redis_server.start()
        accepted += submit(relay, 20, "restarted")

        wait_until(
            lambda: list(statuses(relay, accepted).values()) == ["succeeded"] * len(accepted),
            timeout_s=60,
            message="every accepted task succeeded",
        )
        assert len(set(accepted)) == len(accepted) == 60  # accepted once each (the keys made retries the same)
        # None lost, each ended once (one final event in its log).
        count_outcome(relay.client, accepted, name="idle worker faults").assert_every_task_completed_once(60)
        assert client.llen(wake) <= 1

        started = time.monotonic()
        relay.worker.signal_stop()
        relay.worker.stop()
        assert time.monotonic() - started < STOP_WITHIN_S
    finally:
        client.close()
