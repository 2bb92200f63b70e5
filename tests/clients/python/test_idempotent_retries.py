"""Submissions through a Redis stall: the client retries with the same Idempotency-Key, so every task is made once
and the caller sees nothing a retry could have fixed."""

from __future__ import annotations

import threading
import time

import pytest
from relay_client import Relay, RelayError, TaskStatus

from tests.clients.python.conftest import ADMIN_TOKEN, TENANT_KEY
from tests.conftest import RedisServer
from tests.integration.conftest import StartRelay
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBMITTERS = 5
EACH = 10
FREEZE_S = 5.0


def test_fifty_submissions_through_a_frozen_redis_make_fifty_tasks_each_once(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    api = start_relay("api")
    start_relay("worker")
    accepted: list[str] = []
    raised: list[BaseException] = []
    slowest_s: list[float] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        with Relay(api.url, TENANT_KEY) as relay:  # the library's defaults
            for i in range(EACH):
                started = time.monotonic()
                try:
                    task = relay.tasks.submit("echo", {"submitter": n, "i": i})
                except RelayError as exc:
                    with lock:
                        raised.append(exc)
                    continue
                with lock:
                    accepted.append(task.id)
                    slowest_s.append(time.monotonic() - started)
                time.sleep(0.4)  # spread over the stall

    submitters = [threading.Thread(target=submit, args=(n,), daemon=True) for n in range(SUBMITTERS)]
    for thread in submitters:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= 8, message="submissions before the stall")
        redis_server.freeze()
        time.sleep(FREEZE_S)
    finally:
        redis_server.thaw()
    for thread in submitters:
        thread.join(90)

    assert raised == []
    assert len(accepted) == SUBMITTERS * EACH
    assert len(set(accepted)) == len(accepted), "one submission was answered with another's task"
    assert max(slowest_s) > 2, "no submission waited for the stall: the test did not test retries"
    with Relay(api.url, ADMIN_TOKEN) as admin:
        listed = [task.id for task in admin.tasks.list(page_size=500)]
        assert sorted(listed) == sorted(accepted), "a retry made a second task, or a task went missing"
        for task_id in accepted:
            assert admin.tasks.wait(task_id, timeout=30).status is TaskStatus.SUCCEEDED
