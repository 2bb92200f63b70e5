"""Following tasks over ``/v1/ws`` against real processes: live streams, WebSocket-first delivery, resume."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import OpenWs, Relay, relay_for_many_tests
from tests.support import Api, Receiver, RelayProcess, WsClient, dead_letters, relay_env, wait_until

if TYPE_CHECKING:
    from tests.conftest import RedisServer

# Long enough that a client on a busy machine acks in time, short enough that the fallback tests wait little.
ACK_TIMEOUT_S = 3.0
WS_ENV = {
    "RELAY_WS_ACK_TIMEOUT": str(ACK_TIMEOUT_S),
    "RELAY_WS_PING_INTERVAL": "1",
    "RELAY_WS_PING_TIMEOUT": "1",
    "RELAY_TASK_MODULES": "tests.kinds_for_tests",
}
WEBSOCKET = {"websocket": True}


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, **WS_ENV) as relay:
        yield relay


@pytest.fixture
def start_api(redis_server: RedisServer) -> Iterator[Callable[[], RelayProcess]]:
    """Another ``relay api`` on the shared Redis (beside the shared API and worker), stopped after the test."""
    started: list[RelayProcess] = []

    def start() -> RelayProcess:
        started.append(RelayProcess("api", relay_env(redis_server.url, **WS_ENV)).start())
        return started[-1]

    yield start
    for process in started:
        process.stop()
        process.log_path.unlink(missing_ok=True)


def subscribed(ws: WsClient, task: dict[str, Any], *, after_seq: int = 0) -> dict[str, Any]:
    ws.subscribe(task, after_seq=after_seq)
    frame = ws.recv()
    assert (frame["type"], frame["task_id"]) == ("subscribed", task["id"]), frame
    return frame


def logged_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def attempts(api: Api, task_id: str) -> list[tuple[str, str]]:
    response = api.get(f"/v1/tasks/{task_id}/deliveries")
    assert response.status_code == 200, response.text
    return [(a["channel"], a["outcome"]) for a in response.json()["attempts"]]


def unix_time(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# Streams.


def test_a_socket_subscribed_before_the_end_gets_every_event_in_order(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("sleep", {"seconds": 2}, body=WEBSOCKET)
    ws = open_ws()

    first = subscribed(ws, task)
    events = ws.events_until_final(task["id"], ack=True)

    assert first["status"] in ("queued", "running")
    assert first["recovered"] is True
    assert seqs(events) == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == ["task.progress"] * (len(events) - 1) + ["task.completed"]
    assert len(events) >= 3  # at least started, a second in, and the end
    assert events[-1]["data"] == {"status": "succeeded", "result": {"slept": 2}}
    assert events == logged_events(shared.client, task["id"])  # the same Event the log and a webhook carry


def test_a_socket_subscribed_after_the_end_gets_the_retained_events(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("count_sync", {"steps": 3})
    shared.client.wait_task(task["id"])
    ws = open_ws()

    first = subscribed(ws, task)
    events = ws.events_until_final(task["id"])

    assert (first["status"], first["last_seq"], first["recovered"]) == ("succeeded", 4, True)
    assert seqs(events) == [1, 2, 3, 4]
    assert events == logged_events(shared.client, task["id"])


def test_after_seq_gives_only_later_events(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("count_sync", {"steps": 3})
    shared.client.wait_task(task["id"])
    ws = open_ws()

    first = subscribed(ws, task, after_seq=2)
    events = ws.events_until_final(task["id"])

    assert (first["last_seq"], first["recovered"]) == (4, True)
    assert seqs(events) == [3, 4]


def test_one_socket_follows_two_tasks_at_once(shared: Relay, open_ws: OpenWs) -> None:
    tasks = [shared.client.submit("sleep", {"seconds": 1}, body=WEBSOCKET) for _ in range(2)]
    ws = open_ws()
    for task in tasks:
        ws.subscribe(task)

    # One task's events may come before the other's subscribed frame: read them all in one loop.
    streams: dict[str, list[dict[str, Any]]] = {task["id"]: [] for task in tasks}
    subscriptions: set[str] = set()
    finished: set[str] = set()
    while finished != set(streams):
        frame = ws.recv()
        if frame["type"] == "subscribed":
            subscriptions.add(frame["task_id"])
            continue
        assert frame["type"] == "event", frame
        assert frame["event"]["task_id"] in subscriptions  # after its own subscribed frame
        event = frame["event"]
        streams[event["task_id"]].append(event)
        if event["type"] == "task.completed":
            finished.add(event["task_id"])

    for task_id, events in streams.items():
        assert seqs(events) == list(range(1, len(events) + 1))
        assert events == logged_events(shared.client, task_id)


# WebSocket first, then webhook.


def test_an_acked_push_settles_the_event_and_no_webhook_is_sent(
    shared: Relay, open_ws: OpenWs, receiver: Receiver
) -> None:
    task = shared.client.submit("sleep", {"seconds": 1}, webhook=receiver.url("/acked"), body=WEBSOCKET)
    ws = open_ws()
    subscribed(ws, task)

    final = ws.events_until_final(task["id"], ack=True)[-1]

    # The ack settles the webhook in the same step that records it: once "skipped" is logged, none can go out.
    wait_until(
        lambda: ("webhook", "skipped") in attempts(shared.client, task["id"]),
        message="the ack to settle the webhook",
    )
    assert receiver.on("/acked") == []
    response = shared.client.get(f"/v1/tasks/{task['id']}/deliveries").json()["attempts"]
    assert [(a["event_id"], a["channel"], a["outcome"]) for a in response] == [
        (final["id"], "websocket", "acked"),
        (final["id"], "webhook", "skipped"),
    ]
    metrics = shared.client.get("/metrics", key=None).text
    assert re.search(r'relay_deliveries_total\{channel="webhook",outcome="skipped"\} [1-9]', metrics)


def test_an_unacked_push_falls_back_to_the_webhook(shared: Relay, open_ws: OpenWs, receiver: Receiver) -> None:
    task = shared.client.submit("sleep", {"seconds": 1}, webhook=receiver.url("/unacked"), body=WEBSOCKET)
    ws = open_ws()
    subscribed(ws, task)

    final = ws.events_until_final(task["id"])[-1]  # read, never acked
    (hook,) = receiver.wait_for("/unacked")

    assert hook.json() == final
    assert hook.headers["webhook-id"] == final["id"]
    assert hook.at - unix_time(final["created_at"]) >= ACK_TIMEOUT_S  # not before the push had its chance
    wait_until(lambda: len(attempts(shared.client, task["id"])) == 2, message="both attempts")
    assert attempts(shared.client, task["id"]) == [("websocket", "unacked"), ("webhook", "delivered")]


def test_without_a_socket_the_webhook_goes_out_at_once(shared: Relay, receiver: Receiver) -> None:
    task = shared.client.submit("echo", "nobody listens", webhook=receiver.url("/direct"), body=WEBSOCKET)

    (hook,) = receiver.wait_for("/direct")

    assert hook.json()["data"] == {"status": "succeeded", "result": "nobody listens"}
    assert hook.at - unix_time(hook.json()["created_at"]) < ACK_TIMEOUT_S  # it did not wait for an ack
    wait_until(lambda: attempts(shared.client, task["id"]), message="the webhook attempt to be recorded")
    assert attempts(shared.client, task["id"]) == [("webhook", "delivered")]  # and no push was attempted


def test_an_unacked_websocket_only_event_stays_in_the_log_and_is_no_dead_letter(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("echo", "push only", body=WEBSOCKET)
    ws = open_ws()
    subscribed(ws, task)

    final = ws.events_until_final(task["id"])[-1]  # never acked

    wait_until(lambda: attempts(shared.client, task["id"]), timeout_s=10, message="the unacked attempt")
    assert attempts(shared.client, task["id"]) == [("websocket", "unacked")]
    assert dead_letters(shared.client, task_id=task["id"]) == []
    assert logged_events(shared.client, task["id"]) == [final]
    again = open_ws()
    subscribed(again, task)
    assert again.events_until_final(task["id"]) == [final]  # and still there for a resume


# Resume.


def test_a_dropped_socket_resumes_from_its_last_seq_without_gaps_or_duplicates(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("sleep", {"seconds": 3}, body=WEBSOCKET)
    first = open_ws()
    subscribed(first, task)
    before = [first.recv()["event"], first.recv()["event"]]
    first.close()

    second = open_ws()
    resumed = subscribed(second, task, after_seq=before[-1]["seq"])
    after = second.events_until_final(task["id"], ack=True)

    assert resumed["recovered"] is True
    assert seqs(before + after) == list(range(1, len(before + after) + 1))
    assert after[-1]["type"] == "task.completed"
    assert before + after == logged_events(shared.client, task["id"])


def test_a_resume_from_far_back_gets_more_events_than_a_send_queue_holds(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("burst", {"events": 2000}, body=WEBSOCKET)
    shared.client.wait_task(task["id"], timeout_s=60)
    ws = open_ws()

    first = subscribed(ws, task)
    events = ws.events_until_final(task["id"], timeout_s=30)

    assert (first["last_seq"], first["recovered"]) == (2001, True)
    assert seqs(events) == list(range(1, 2002))


@pytest.mark.slow  # a restart: a fault test
def test_a_socket_resumes_after_its_api_is_killed(
    shared: Relay, open_ws: OpenWs, start_api: Callable[[], RelayProcess]
) -> None:
    api = start_api()
    task = shared.client.submit("sleep", {"seconds": 4}, body=WEBSOCKET)
    first = open_ws(api.url)
    subscribed(first, task)
    before = [first.recv()["event"], first.recv()["event"]]

    api.kill()
    first.wait_closed()
    api.start()
    second = open_ws(api.url)
    subscribed(second, task, after_seq=before[-1]["seq"])
    after = second.events_until_final(task["id"], ack=True)

    assert seqs(before + after) == list(range(1, len(before + after) + 1))
    assert after[-1]["type"] == "task.completed"
    assert before + after == logged_events(shared.client, task["id"])


# Cluster.


def test_a_socket_on_one_api_gets_events_of_a_task_submitted_through_another(
    shared: Relay, open_ws: OpenWs, start_api: Callable[[], RelayProcess]
) -> None:
    api_b = start_api()
    task = shared.client.submit("sleep", {"seconds": 1}, body=WEBSOCKET)  # through API A
    ws = open_ws(api_b.url)
    subscribed(ws, task)

    events = ws.events_until_final(task["id"], ack=True)

    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "task.completed"
    # The ack through API B settles the event for the worker, which API A reports.
    wait_until(lambda: attempts(shared.client, task["id"]), message="the acked push to be recorded")
    assert attempts(shared.client, task["id"]) == [("websocket", "acked")]
