"""Cancelling tasks with real processes: queued behind a busy worker, running, finished; the final event over
WebSocket and webhook."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StartRelay
from tests.integration.test_api import assert_json_error
from tests.integration.test_kinds import TEST_KINDS
from tests.support import RELAY, ROOT, Api, Receiver, WsClient, wait_until, webhook_attempts


def cancel(api: Api, task_id: str, key: str = "key-acme") -> dict[str, Any]:
    response = api.post(f"/v1/tasks/{task_id}/cancel", key=key)
    assert response.status_code == 202, response.text
    return dict(response.json())


def event_types(api: Api, task_id: str) -> list[str]:
    response = api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()["events"]]


@pytest.mark.slow  # waits for a webhook behind a busy worker
def test_a_queued_task_never_runs_and_its_cancel_is_delivered_by_webhook(
    start_relay: StartRelay, receiver: Receiver
) -> None:
    api = Api(start_relay("api").url)
    start_relay("worker", "--processes", "1", "--threads", "1")  # one task at a time
    try:
        busy = api.submit("sleep", {"seconds": 3})
        wait_until(lambda: api.task(busy["id"])["status"] == "running", message="the worker to be busy")
        queued = api.submit("echo", {"never": "runs"}, webhook=receiver.url("/cancelled"))
        assert api.task(queued["id"])["status"] == "queued"

        answer = cancel(api, queued["id"])

        assert answer["status"] == "cancelled"
        assert answer["finished_at"] is not None
        (hook,) = receiver.wait_for("/cancelled")
        assert hook.json()["type"] == "task.cancelled"
        assert hook.json()["data"] == {"status": "cancelled"}
        assert hook.json()["task_id"] == queued["id"]
        # Once the worker is free it takes the queued message, and drops it: the task has ended.
        assert api.wait_task(busy["id"])["status"] == "succeeded"
        later = api.wait_task(api.submit("echo", "after")["id"])
        assert later["status"] == "succeeded"
        kept = api.task(queued["id"])
        assert (kept["status"], kept["result"], kept["started_at"]) == ("cancelled", None, None)
        assert event_types(api, queued["id"]) == ["task.cancelled"]
        assert [a["outcome"] for a in webhook_attempts(api, queued["id"])] == ["delivered"]
    finally:
        api.close()


def test_a_running_task_is_cancelled_on_its_worker_and_the_socket_gets_the_final_event(
    start_relay: StartRelay, receiver: Receiver
) -> None:
    api_process = start_relay("api")
    worker = start_relay("worker")
    api = Api(api_process.url)
    ws = WsClient(api_process.url)
    try:
        task = api.submit("sleep", {"seconds": 60}, webhook=receiver.url("/running"), body={"websocket": True})
        ws.subscribe(task)
        wait_until(lambda: api.task(task["id"])["status"] == "running", message="the task to run")

        answer = cancel(api, task["id"])

        assert answer["status"] == "cancelled"
        final = ws.events_until_final(task["id"], ack=True)[-1]
        assert (final["type"], final["data"]) == ("task.cancelled", {"status": "cancelled"})
        # The run is cancelled on its worker within a few seconds (at its next progress write or renewal).
        wait_until(
            lambda: (
                f"task {task['id']}: task {task['id']} has ended; its run is cancelled" in worker.output()
                or f"task {task['id']}: this run lost its lease" in worker.output()
            ),
            timeout_s=10,
            message="the worker to drop the cancelled run",
        )
        kept = api.task(task["id"])
        assert kept["status"] == "cancelled"
        types = event_types(api, task["id"])
        assert types[-1] == "task.cancelled"
        assert "task.completed" not in types
        # WebSocket first: the acked push settles it, so no webhook goes out.
        try:
            wait_until(
                lambda: ("webhook", "skipped") in {(a["channel"], a["outcome"]) for a in deliveries(api, task["id"])},
                message="the ack to settle the webhook",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {deliveries(api, task['id'])}") from None
        assert receiver.on("/running") == []
    finally:
        ws.close()
        api.close()


@pytest.mark.slow  # waits for the worker to notice the cancel
def test_a_cancelled_running_task_runs_its_finally_on_the_worker(start_relay: StartRelay, tmp_path: Path) -> None:
    api = Api(start_relay("api", RELAY_TASK_MODULES=TEST_KINDS).url)
    start_relay("worker", RELAY_TASK_MODULES=TEST_KINDS)
    marker = tmp_path / "held"
    try:
        task = api.submit("held", {"marker": str(marker)})
        wait_until(lambda: marker.exists() and api.task(task["id"])["status"] == "running", message="the task to run")

        assert cancel(api, task["id"])["status"] == "cancelled"

        # The kind's own finally, in the worker process, says its wait was cancelled (asyncio cancellation).
        wait_until(lambda: "finally" in marker.read_text(), timeout_s=15, message="the kind's finally to run")
        assert marker.read_text().splitlines() == ["started", "finally: cancelled"]
        assert event_types(api, task["id"]) == ["task.cancelled"]
        assert api.task(task["id"])["result"] is None
    finally:
        api.close()


def deliveries(api: Api, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/deliveries")
    assert response.status_code == 200, response.text
    return list(response.json()["attempts"])


@pytest.mark.slow  # several tenants' tasks run to their end
def test_who_may_cancel_and_a_finished_task_is_a_409(start_relay: StartRelay) -> None:
    api_process = start_relay("api")
    start_relay("worker")
    api = Api(api_process.url)
    try:
        done = api.wait_task(api.submit("echo", 1)["id"])
        detail = assert_json_error(api.post(f"/v1/tasks/{done['id']}/cancel"), 409)
        assert "already ended (succeeded)" in detail

        running = api.submit("sleep", {"seconds": 30})
        assert_json_error(api.post(f"/v1/tasks/{running['id']}/cancel", key="key-globex"), 404)
        assert_json_error(api.post("/v1/tasks/task_doesnotexist/cancel"), 404)
        by_operator = cancel(api, running["id"], key="admin-token")
        assert by_operator["status"] == "cancelled"
        assert by_operator["ws_token"] is None  # the operator is not its owner
        assert_json_error(api.post(f"/v1/tasks/{running['id']}/cancel"), 409)

        sleeping = api.submit("sleep", {"seconds": 30})
        cli = subprocess.run(
            [*RELAY, "tasks", "cancel", sleeping["id"], "--url", api_process.url, "--token", "key-acme"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == f"{sleeping['id']} cancelled"
        again = subprocess.run(
            [*RELAY, "tasks", "cancel", sleeping["id"], "--url", api_process.url, "--token", "key-acme"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert again.returncode == 1
        assert "already ended (cancelled)" in again.stderr
    finally:
        api.close()
