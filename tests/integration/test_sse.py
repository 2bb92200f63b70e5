"""``GET /v1/tasks/{id}/stream`` against real processes: every event once and in order, resume, who may follow,
bad resume points, keepalive comments, a stream that never holds up a webhook, and a resume across an API restart."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.conftest import Relay, relay_for_many_tests
from tests.support import Api, Receiver, RelayProcess, Streamed, relay_env, stream_task, wait_until

if TYPE_CHECKING:
    from tests.conftest import RedisServer

ACK_TIMEOUT_S = 5.0
SSE_ENV = {
    "RELAY_WS_ACK_TIMEOUT": str(ACK_TIMEOUT_S),
    "RELAY_WS_PING_INTERVAL": "0.5",  # a stream's keepalive comment follows it: two a second
    "RELAY_WS_PING_TIMEOUT": "3",
    "RELAY_TASK_MODULES": "tests.kinds_for_tests",
    "RELAY_WS_MAX_PER_CLIENT": "4",  # streams from one address too
}
WEBSOCKET = {"websocket": True}
FINAL = ("task.completed", "task.failed", "task.cancelled")


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, **SSE_ENV) as relay:
        yield relay


def logged_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def attempts(api: Api, task_id: str) -> list[tuple[str, str]]:
    response = api.get(f"/v1/tasks/{task_id}/deliveries")
    assert response.status_code == 200, response.text
    return [(a["channel"], a["outcome"]) for a in response.json()["attempts"]]


def seqs(streamed: Streamed) -> list[int]:
    return [e["seq"] for e in streamed.events]


def finished(relay: Relay, steps: int = 3) -> dict[str, Any]:
    """A task that has ended with ``steps`` progress events and its completion: seq 1..steps+1."""
    task = relay.client.submit("count_sync", {"steps": steps})
    relay.client.wait_task(task["id"])
    return task


def unix_time(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_a_stream_gives_subscribed_then_every_event_once_in_order_and_ends_after_the_final(shared: Relay) -> None:
    task = shared.client.submit("sleep", {"seconds": 2})

    streamed = stream_task(shared.api.url, task["id"], key=task["ws_token"])

    assert streamed.status_code == 200
    assert streamed.content_type.startswith("text/event-stream")
    assert streamed.subscribed is not None
    assert streamed.subscribed.keys() == {"type", "task_id", "status", "last_seq", "recovered"}
    assert (streamed.subscribed["type"], streamed.subscribed["task_id"]) == ("subscribed", task["id"])
    assert streamed.subscribed["status"] in ("queued", "running")
    assert streamed.subscribed["recovered"] is True
    assert streamed.ended  # the server closed the stream after the final event
    assert seqs(streamed) == list(range(1, len(streamed.events) + 1))
    assert len(streamed.events) >= 3
    assert [m.id for m in streamed.messages] == [str(seq) for seq in seqs(streamed)]
    assert [m.event for m in streamed.messages] == [e["type"] for e in streamed.events]
    assert [m.event for m in streamed.messages] == ["task.progress"] * (len(streamed.events) - 1) + ["task.completed"]
    assert streamed.events == logged_events(shared.client, task["id"])  # the same Event the log and a webhook carry


def test_last_event_id_and_after_seq_resume_with_exactly_the_later_events(shared: Relay) -> None:
    task = finished(shared)
    url, token = shared.api.url, task["ws_token"]

    by_header = stream_task(url, task["id"], key=token, headers={"Last-Event-ID": "2"})
    by_query = stream_task(url, task["id"], params={"token": token, "after_seq": 2})
    header_wins = stream_task(url, task["id"], params={"token": token, "after_seq": 0}, headers={"Last-Event-ID": "3"})
    from_start = stream_task(url, task["id"], params={"token": token})

    assert seqs(by_header) == seqs(by_query) == [3, 4]
    assert (
        by_header.subscribed
        == by_query.subscribed
        == {
            "type": "subscribed",
            "task_id": task["id"],
            "status": "succeeded",
            "last_seq": 4,
            "recovered": True,
        }
    )
    assert seqs(header_wins) == [4]  # an EventSource reconnect keeps its URL and says where it is in the header
    assert seqs(from_start) == [1, 2, 3, 4]
    assert all(s.ended for s in (by_header, by_query, header_wins, from_start))


def test_a_stream_resumed_past_the_final_event_ends_at_once(shared: Relay) -> None:
    task = finished(shared)
    url, token = shared.api.url, task["ws_token"]

    asked = stream_task(url, task["id"], params={"token": token, "after_seq": 4})
    reconnected = stream_task(url, task["id"], params={"token": token}, headers={"Last-Event-ID": "4"})

    assert (asked.status_code, asked.events, asked.ended) == (200, [], True)
    assert asked.subscribed is not None
    assert asked.subscribed["status"] == "succeeded"
    # EventSource reconnects after every end of a stream; a 204 is what makes it stop.
    assert reconnected.status_code == 204


def test_the_owner_the_operator_and_the_tasks_token_may_follow_and_no_one_else(shared: Relay) -> None:
    task = finished(shared, steps=1)
    url, token, task_id = shared.api.url, task["ws_token"], task["id"]

    allowed = {
        "owner": stream_task(url, task_id, key="key-acme"),
        "operator": stream_task(url, task_id, key="admin-token"),
        "bearer token": stream_task(url, task_id, key=token),
        "query token": stream_task(url, task_id, params={"token": token}),
    }
    refused = {
        "another tenant": stream_task(url, task_id, key="key-globex"),
        "a wrong bearer token": stream_task(url, task_id, key="not-the-token"),
        "a wrong query token": stream_task(url, task_id, params={"token": "not-the-token"}),
        "an API key in the query": stream_task(url, task_id, params={"token": "key-acme"}),
        "a missing task": stream_task(url, "task_doesnotexist0000000000", key="key-acme"),
        "a missing task by token": stream_task(url, "task_doesnotexist0000000000", params={"token": token}),
    }
    anonymous = stream_task(url, task_id)

    assert {who: (s.status_code, seqs(s)) for who, s in allowed.items()} == {who: (200, [1, 2]) for who in allowed}
    assert {who: s.status_code for who, s in refused.items()} == dict.fromkeys(refused, 404)
    assert all('"detail"' in s.body for s in refused.values())
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"after_seq": "-1"}, {}, "after_seq"),
        ({"after_seq": "two"}, {}, "after_seq"),
        ({"after_seq": "1.5"}, {}, "after_seq"),
        ({}, {"Last-Event-ID": "two"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "-3"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": "1e3"}, "Last-Event-ID"),
        ({}, {"Last-Event-ID": str(2**64)}, "Last-Event-ID"),
    ],
)
def test_a_bad_resume_point_is_a_422_that_names_it(
    shared: Relay, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    task = shared.client.submit("echo", "resume points")

    streamed = stream_task(shared.api.url, task["id"], key=task["ws_token"], params=params, headers=headers)

    assert streamed.status_code == 422, streamed.body
    assert field in streamed.body


def test_a_silent_task_gets_comment_lines_and_its_cancel_ends_the_stream(shared: Relay) -> None:
    task = shared.client.submit("echo", "later", body={"delay_s": 60})  # scheduled: no event for a minute
    progress: list[Streamed] = []
    result: list[Streamed] = []
    reader = threading.Thread(
        target=lambda: result.append(
            stream_task(
                shared.api.url,
                task["id"],
                params={"token": task["ws_token"]},
                until=lambda s: progress.append(s) is not None,  # never stops: lets the test watch it
            )
        ),
        daemon=True,
    )
    reader.start()

    def open_streams() -> int:
        metrics = shared.client.get("/metrics", key=None).text
        match = re.search(r'^relay_live_connections\{channel="sse"\} (\d+)', metrics, re.MULTILINE)
        return int(match.group(1)) if match else 0

    wait_until(lambda: open_streams() >= 1, message="the stream to be counted in /metrics")
    # Keepalive comments at the ping interval (0.5 s here) while nothing happens.
    wait_until(lambda: progress and len(progress[-1].comments) >= 2, timeout_s=15, message="two keepalive comments")
    cancelled = shared.client.post(f"/v1/tasks/{task['id']}/cancel")
    cancelled_at = time.monotonic()
    assert cancelled.status_code == 202, cancelled.text
    reader.join(10)
    assert not reader.is_alive(), "the cancel did not end the stream"
    # A follower learns of the cancel at once (the API ends the stream on the final event), not a timeout later.
    assert time.monotonic() - cancelled_at < 5

    (streamed,) = result
    assert len(streamed.comments) >= 2, streamed.comments
    assert streamed.subscribed is not None
    assert streamed.subscribed["status"] == "scheduled"
    assert [m.event for m in streamed.messages] == ["task.cancelled"]
    assert streamed.ended


def test_streams_from_one_address_are_bounded_and_a_closed_one_frees_its_place(shared: Relay) -> None:
    task = shared.client.submit("echo", "later", body={"delay_s": 60})
    url = f"{shared.api.url}/v1/tasks/{task['id']}/stream"
    with contextlib.ExitStack() as open_:
        http = open_.enter_context(httpx.Client(timeout=10))
        streams = [open_.enter_context(http.stream("GET", url, params={"token": task["ws_token"]})) for _ in range(4)]
        readers = [response.iter_raw() for response in streams]  # (kept: a reader dropped closes its stream)
        for response, reader in zip(streams, readers, strict=True):
            assert response.status_code == 200
            next(reader)  # its subscribed frame: the stream is open and counted
        refused = http.get(url, params={"token": task["ws_token"]})
        assert refused.status_code == 429
        assert "RELAY_WS_MAX_PER_CLIENT" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        streams[0].close()

        def another_opens() -> bool:
            with http.stream("GET", url, params={"token": task["ws_token"]}) as response:
                return response.status_code == 200

        wait_until(another_opens, timeout_s=10, message="a closed stream's place to be free again")
    assert shared.client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 202


def test_a_resume_from_far_back_gets_more_events_than_a_stream_queues(shared: Relay) -> None:
    task = shared.client.submit("burst", {"events": 2000})
    shared.client.wait_task(task["id"], timeout_s=60)

    streamed = stream_task(shared.api.url, task["id"], key=task["ws_token"], timeout_s=30)

    assert seqs(streamed) == list(range(1, 2002))
    assert streamed.ended


def test_a_webhook_task_followed_only_by_a_stream_gets_its_webhook_at_once(shared: Relay, receiver: Receiver) -> None:
    """A stream never acks, so it must not count as a socket that might: the webhook does not wait for an ack."""
    task = shared.client.submit("sleep", {"seconds": 1}, webhook=receiver.url("/streamed"), body=WEBSOCKET)

    streamed = stream_task(shared.api.url, task["id"], key=task["ws_token"])
    (hook,) = receiver.wait_for("/streamed")

    final = streamed.events[-1]
    assert final["type"] == "task.completed"
    assert hook.json() == final
    assert hook.at - unix_time(final["created_at"]) < ACK_TIMEOUT_S / 2  # no wait for an ack that cannot come
    wait_until(lambda: attempts(shared.client, task["id"]), message="the webhook attempt to be recorded")
    assert attempts(shared.client, task["id"]) == [("webhook", "delivered")]  # and no push was attempted


# Across an API restart.


@pytest.fixture
def start_api(redis_server: RedisServer, shared: Relay) -> Iterator[Callable[[], RelayProcess]]:
    """Another ``relay api`` on the shared Redis (beside the shared API and worker), stopped after the test."""
    started: list[RelayProcess] = []

    def start() -> RelayProcess:
        started.append(RelayProcess("api", relay_env(redis_server.url, **SSE_ENV)).start())
        return started[-1]

    yield start
    for process in started:
        process.stop()
        process.log_path.unlink(missing_ok=True)


@pytest.mark.slow
def test_a_stream_resumes_across_an_api_restart_with_nothing_lost_or_repeated(
    shared: Relay, start_api: Callable[[], RelayProcess]
) -> None:
    api = start_api()
    task = shared.client.submit("sleep", {"seconds": 6})
    token = task["ws_token"]

    progress: list[Streamed] = []
    result: list[Streamed] = []
    reader = threading.Thread(
        target=lambda: result.append(
            stream_task(api.url, task["id"], params={"token": token}, until=lambda s: progress.append(s) is not None)
        ),
        daemon=True,
    )
    reader.start()
    wait_until(lambda: progress and len(progress[-1].messages) >= 2, message="two events before the restart")
    stopping = time.monotonic()
    api.stop()  # a clean stop, with the stream open: the API ends the stream rather than wait for it
    stop_s = time.monotonic() - stopping
    reader.join(10)
    (before,) = result
    assert before.ended
    api.start()
    last_id = before.messages[-1].id
    assert last_id is not None
    after = stream_task(api.url, task["id"], params={"token": token}, headers={"Last-Event-ID": last_id})

    received = [e["seq"] for e in before.events + after.events]
    expected = [e["seq"] for e in logged_events(shared.client, task["id"])]
    lost = sorted(set(expected) - set(received))
    duplicated = len(received) - len(set(received))
    print(f"received {len(received)}, expected {len(expected)}, lost {len(lost)}, duplicated {duplicated}")
    assert (lost, duplicated) == ([], 0)
    assert received == expected
    assert after.events[-1]["type"] == "task.completed"
    assert after.ended
    assert stop_s < 5, f"the API took {stop_s:.1f} s to stop with a stream open"
