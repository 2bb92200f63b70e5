"""Event retention on real processes (RELAY_EVENT_RETENTION): a task's events are kept for resume and polling, then
expire; a follower that resumes after that is told ``recovered: false`` and reads the task, which is still kept."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import StartCluster
from tests.support import WsClient, stream_task, task_events, wait_until

pytestmark = pytest.mark.slow

RETENTION_S = 3


def test_events_expire_after_the_retention_and_a_resume_then_reports_recovered_false(
    start_cluster: StartCluster,
) -> None:
    relay = start_cluster(RELAY_EVENT_RETENTION=str(RETENTION_S), RELAY_TASK_MODULES="tests.kinds_for_tests")
    task = relay.client.submit("count_sync", {"steps": 3}, body={"websocket": True})
    relay.client.wait_task(task["id"])
    kept = task_events(relay.client, task["id"])
    read_at = time.monotonic()
    assert [e["seq"] for e in kept] == [1, 2, 3, 4]  # within the retention: all there

    gone = wait_until(
        lambda: task_events(relay.client, task["id"]) == [] and time.monotonic(),
        timeout_s=RETENTION_S + 15,
        message="the events to expire",
    )
    assert gone - read_at >= RETENTION_S - 1  # kept about the retention (counted from the last event), not less

    ws = WsClient(relay.api.url)
    try:
        ws.subscribe(task)
        first = ws.recv()
        assert (first["type"], first["status"], first["last_seq"], first["recovered"]) == (
            "subscribed",
            "succeeded",
            4,
            False,
        )
    finally:
        ws.close()
    streamed = stream_task(relay.api.url, task["id"], key=task["ws_token"], params={"after_seq": 2})
    assert streamed.subscribed is not None
    assert (streamed.subscribed["last_seq"], streamed.subscribed["recovered"]) == (4, False)
    assert streamed.events == []
    # The client reads the task instead: it outlives its events, and the task's token reads it.
    by_token = relay.client.get(f"/v1/tasks/{task['id']}", key=task["ws_token"])
    assert by_token.status_code == 200
    assert (by_token.json()["status"], by_token.json()["result"]) == ("succeeded", {"steps": 3, "total": 6})
    assert relay.client.get(f"/v1/tasks/{task['id']}", key="not-the-token").status_code == 401
    unknown = relay.client.get("/v1/tasks/task_doesnotexist0000000000", key=task["ws_token"])
    assert unknown.status_code == 401  # the same answer whether or not the task exists
