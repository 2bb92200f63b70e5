"""What a task hands back is bounded (RELAY_MAX_RESULT_BYTES), and its event log is read a page at a time."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.integration.test_api import assert_json_error
from tests.support import RELAY, ROOT, Api, Receiver

# Small enough that an error message (Relay keeps 2,000 characters of it) can be over it.
MAX_RESULT_BYTES = 3000  # above the 2,000 characters an error message is kept to


@pytest.fixture(scope="module")
def bounded(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(
        redis_server, RELAY_TASK_MODULES="tests.kinds_for_tests", RELAY_MAX_RESULT_BYTES=str(MAX_RESULT_BYTES)
    ) as relay:
        yield relay


def every_event(api: Api, task_id: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """The task's events, following next_after_seq; and the pages it took."""
    events: list[dict[str, Any]] = []
    after_seq: int | None = 0
    pages = 0
    while after_seq is not None:
        response = api.get(f"/v1/tasks/{task_id}/events", params={"after_seq": after_seq, **params})
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"events", "next_after_seq"}
        events += page["events"]
        after_seq = page["next_after_seq"]
        pages += 1
    return events, pages


def test_a_result_over_the_bound_fails_the_task_and_is_neither_stored_nor_sent(
    bounded: Relay, receiver: Receiver
) -> None:
    api = bounded.client
    task = api.submit("sized", {"result_bytes": 8000}, webhook=receiver.url("/big"))
    done = api.wait_task(task["id"])

    assert done["status"] == "failed"
    assert done["result"] is None
    assert done["error"]["type"] == "ResultTooLarge"
    assert "RELAY_MAX_RESULT_BYTES (3,000)" in done["error"]["message"]
    assert done["attempt"] == 1  # not retried, though the kind retries anything
    (hook,) = receiver.wait_for("/big")
    assert hook.json()["type"] == "task.failed"
    assert hook.json()["data"]["error"]["type"] == "ResultTooLarge"
    assert len(hook.body) < 2000
    events, _ = every_event(api, task["id"])
    assert [e["type"] for e in events] == ["task.failed"]


def test_a_result_within_the_bound_is_kept(bounded: Relay) -> None:
    done = bounded.client.wait_task(bounded.client.submit("sized", {"result_bytes": 2800})["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == "r" * 2800


@pytest.mark.parametrize("go_on", [False, True])
def test_a_progress_message_over_the_bound_fails_the_attempt_even_when_the_kind_goes_on(
    bounded: Relay, go_on: bool
) -> None:
    api = bounded.client
    task = api.submit("sized", {"progress_bytes": 8000, "go_on": go_on, "result_bytes": 10})
    done = api.wait_task(task["id"])

    assert done["status"] == "failed"
    assert done["error"]["type"] == "ResultTooLarge"
    assert "progress message of 8,002 bytes" in done["error"]["message"]
    assert done["progress"] is None
    assert done["attempt"] == 1
    events, _ = every_event(api, task["id"])
    assert [e["type"] for e in events] == ["task.failed"]  # the message was never stored


def test_an_error_over_the_bound_is_replaced_by_result_too_large(bounded: Relay) -> None:
    api = bounded.client
    # Measured whole, not after it is cut to its first 2,000 characters (which would fit).
    done = api.wait_task(api.submit("sized", {"error_bytes": 3600})["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "ResultTooLarge"
    assert "its ValueError error" in done["error"]["message"]
    assert done["attempt"] == 1

    # A smaller error is the kind's own, and retried as the kind says.
    done = api.wait_task(api.submit("sized", {"error_bytes": 100})["id"])
    assert done["error"] == {"type": "ValueError", "message": "e" * 100}
    assert done["attempt"] == 3
    # One within the bound but past 2,000 characters is the kind's own, cut, and says so.
    done = api.wait_task(api.submit("sized", {"error_bytes": 2500})["id"])
    assert done["error"]["type"] == "ValueError"
    assert done["error"]["message"] == "e" * 2000 + " …(cut)"


@pytest.mark.slow
def test_events_come_a_page_at_a_time_and_next_after_seq_follows_them_to_the_end(bounded: Relay) -> None:
    api = bounded.client
    task = api.submit("burst", {"events": 2500})
    api.wait_task(task["id"], timeout_s=60)

    first = api.get(f"/v1/tasks/{task['id']}/events").json()
    assert len(first["events"]) == 1000
    assert first["next_after_seq"] == 1000
    events, pages = every_event(api, task["id"])
    assert [e["seq"] for e in events] == list(range(1, 2502))
    assert events[-1]["type"] == "task.completed"
    assert pages == 3

    small, pages = every_event(api, task["id"], limit=100)
    assert small == events
    assert pages == 26
    last = api.get(f"/v1/tasks/{task['id']}/events", params={"after_seq": 2498, "limit": 3}).json()
    assert [e["seq"] for e in last["events"]] == [2499, 2500, 2501]
    assert last["next_after_seq"] is None
    for limit in (0, 1001):
        detail = assert_json_error(api.get(f"/v1/tasks/{task['id']}/events", params={"limit": limit}), 422)
        assert "limit" in detail

    # relay tasks show follows the pages: the last event is on its third.
    shown = subprocess.run(
        [*RELAY, "tasks", "show", task["id"], "--url", bounded.api.url, "--token", "key-acme"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\b2501\W+task\.completed\b", shown.stdout), shown.stdout[-2000:]
