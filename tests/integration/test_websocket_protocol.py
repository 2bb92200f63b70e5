"""``/v1/ws`` as a protocol: heartbeat, a consumer that does not read, bad input, and its metric."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from delivery import keys
from service.api.live import heartbeat_tick_s
from service.api.ws import SEND_QUEUE_FRAMES
from tests.integration.conftest import OpenWs, Relay, relay_for_many_tests
from tests.support import wait_until

if TYPE_CHECKING:
    from tests.conftest import RedisServer

PING_INTERVAL_S = 1.0
PING_TIMEOUT_S = 1.0
TICK_S = heartbeat_tick_s(PING_INTERVAL_S, PING_TIMEOUT_S)
WS_ENV = {
    "RELAY_WS_ACK_TIMEOUT": "3",  # a client on a busy machine acks in time
    "RELAY_WS_PING_INTERVAL": str(PING_INTERVAL_S),
    "RELAY_WS_PING_TIMEOUT": str(PING_TIMEOUT_S),
    "RELAY_TASK_MODULES": "tests.kinds_for_tests",
}
WEBSOCKET = {"websocket": True}


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, **WS_ENV) as relay:
        yield relay


# Heartbeat.


def test_server_pings_and_a_client_that_answers_stays_connected(open_ws: OpenWs) -> None:
    opened_at = time.monotonic()
    ws = open_ws()

    wait_until(lambda: ws.pings >= 2 and time.monotonic() - opened_at > 3.5, timeout_s=10, message="two pings")

    assert not ws.closed.is_set()
    ws.send_raw("still there?")
    assert ws.recv()["code"] == "bad_frame"  # an answer: the socket is open


@pytest.mark.slow  # timing: counts pings over seconds
def test_pings_come_once_an_interval_never_a_tick_late(open_ws: OpenWs) -> None:
    ws = open_ws()

    wait_until(lambda: ws.pings >= 7, timeout_s=15, message="seven pings")

    gaps = [later - earlier for earlier, later in zip(ws.ping_times, ws.ping_times[1:], strict=False)]
    # Each ping comes within a quarter interval of its time (a one-second tick let one slip to two seconds).
    assert all(gap < PING_INTERVAL_S + TICK_S + 0.2 for gap in gaps), gaps


def test_a_silent_client_is_closed_with_4000_after_ping_timeout(open_ws: OpenWs) -> None:
    opened_at = time.monotonic()
    ws = open_ws(answer_pings=False)

    code = ws.wait_closed(timeout_s=10)
    elapsed_s = time.monotonic() - opened_at

    assert code == 4000
    assert ws.pings >= 1
    # The first ping goes out on the first tick at least one interval after the socket opened; the close on the
    # first tick past the timeout after that: interval + timeout + up to two tick roundings.
    assert PING_TIMEOUT_S < elapsed_s < PING_INTERVAL_S + PING_TIMEOUT_S + 2 * TICK_S + 0.5


# A consumer that does not read.

PROGRESS_MESSAGE_BYTES = 8000


def _burst_events() -> int:
    """Enough events to fill every buffer between the socket's send queue and a client that reads nothing.

    The kernel's send buffer of the server's socket grows up to ``tcp_wmem``'s maximum (4 MiB by default);
    uvicorn holds 64 KiB more, the client's small receive buffer little. Big events keep that count of frames
    small, so that the burst stays short: the send queue then overflows by hundreds of frames.
    """
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_buffer_max = 4 * 1024 * 1024
    in_flight = (send_buffer_max + 256 * 1024) // PROGRESS_MESSAGE_BYTES
    return SEND_QUEUE_FRAMES + in_flight + 500


def test_a_consumer_that_does_not_read_is_closed_with_1013_and_resumes_without_loss(
    shared: Relay, open_ws: OpenWs
) -> None:
    events = _burst_events()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small receive window
    assert shared.api.port is not None
    raw.connect(("127.0.0.1", shared.api.port))
    # max_queue (1, 0): websockets stops reading the socket while one frame waits for recv(), which nobody calls.
    slow = open_ws(read=False, sock=raw, max_queue=(1, 0))
    task = shared.client.submit("burst", {"events": events, "message_bytes": PROGRESS_MESSAGE_BYTES}, body=WEBSOCKET)
    slow.subscribe(task)

    # Sending is not reading: answer the heartbeat all along, so that the overflow, not silence, closes it.
    stop = threading.Event()

    def answer_pings_without_reading() -> None:
        while not stop.wait(PING_INTERVAL_S / 4):
            slow.send({"type": "pong"})

    ponger = threading.Thread(target=answer_pings_without_reading, daemon=True)
    ponger.start()
    try:
        shared.client.wait_task(task["id"], timeout_s=60)
    finally:
        stop.set()
        ponger.join()

    slow.start_reading()
    frames = slow.frames_until_closed()
    assert slow.close_code == 1013
    assert frames[0]["type"] == "subscribed"
    seqs = [f["event"]["seq"] for f in frames if f["type"] == "event"]
    assert seqs == list(range(1, len(seqs) + 1))  # what came before the close: a prefix, nothing skipped
    assert len(seqs) < events + 1

    resumed = open_ws()
    resumed.subscribe(task, after_seq=seqs[-1])
    subscribed = resumed.recv()
    assert (subscribed["type"], subscribed["recovered"], subscribed["last_seq"]) == ("subscribed", True, events + 1)
    rest = resumed.events_until_final(task["id"], timeout_s=30)
    assert [e["seq"] for e in rest] == list(range(seqs[-1] + 1, events + 2))
    assert rest[-1]["type"] == "task.completed"


# Bad input.


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        '{"type": "hello"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "task_id": "task_x", "token": "t", "after_seq": -1}',
        '{"type": "ack"}',
        '["subscribe"]',
    ],
    ids=["not-json", "unknown-type", "missing-fields", "negative-after-seq", "ack-without-id", "not-an-object"],
)
def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(shared: Relay, open_ws: OpenWs, frame: str) -> None:
    task = shared.client.submit("echo", "x")
    ws = open_ws()

    ws.send_raw(frame)
    error = ws.recv()
    assert (error["type"], error["code"]) == ("error", "bad_frame")
    assert error["message"]

    ws.subscribe(task)
    assert ws.recv()["type"] == "subscribed"


def test_a_refused_subscribe_does_not_tell_whether_the_task_exists(shared: Relay, open_ws: OpenWs) -> None:
    mine = shared.client.submit("echo", "mine")
    theirs = shared.client.submit("echo", "theirs", key="key-globex")
    ws = open_ws()

    attempts = {
        "wrong token": {**mine, "ws_token": "not-the-token"},
        "unknown task": {"id": "task_doesnotexist0000000000", "ws_token": mine["ws_token"]},
        "not a task id": {"id": "dl_something", "ws_token": mine["ws_token"]},
        "another tenant's task, this task's token": {"id": theirs["id"], "ws_token": mine["ws_token"]},
        "another task's token": {"id": mine["id"], "ws_token": theirs["ws_token"]},
    }
    answers = {}
    for name, task in attempts.items():
        ws.subscribe(task)
        answers[name] = ws.recv()

    assert {name: (a["type"], a["code"]) for name, a in answers.items()} == dict.fromkeys(
        attempts, ("error", "forbidden")
    )
    assert len({a["message"] for a in answers.values()}) == 1  # word for word the same
    for a in answers.values():
        assert "not-the-token" not in a["message"]
        assert mine["ws_token"] not in a["message"]
    ws.subscribe(mine)
    assert ws.recv()["type"] == "subscribed"  # still open, and the right token works


def test_subscribing_again_to_a_followed_task_replays_nothing(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("count_sync", {"steps": 3}, body=WEBSOCKET)
    shared.client.wait_task(task["id"])
    ws = open_ws()

    ws.subscribe(task)
    first = ws.recv()
    events = ws.events_until_final(task["id"])
    for _ in range(49):
        ws.subscribe(task)
    again = [ws.recv() for _ in range(49)]
    ws.subscribe({"id": "task_doesnotexist0000000000", "ws_token": "x"})  # a marker: its error comes next
    after = ws.recv()

    assert first["type"] == "subscribed"
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    # Each later subscribe is answered where the task stands, without its events again.
    assert {(f["type"], f["task_id"], f["status"], f["last_seq"]) for f in again} == {
        ("subscribed", task["id"], "succeeded", 4)
    }
    assert after["type"] == "error"  # nothing came between the answers and this one


def test_more_than_20_bad_frames_in_a_minute_close_the_socket_with_1008(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("echo", "x")
    ws = open_ws()
    for _ in range(20):
        ws.send_raw("{not json")
    assert [ws.recv()["code"] for _ in range(20)] == ["bad_frame"] * 20
    ws.subscribe(task)
    assert ws.recv()["type"] == "subscribed"  # twenty are tolerated

    ws.send_raw("{not json")

    assert ws.wait_closed() == 1008


def test_a_frame_over_64_kib_closes_the_socket_with_1009(open_ws: OpenWs) -> None:
    ws = open_ws()
    ws.send({"type": "ack", "event_id": "x" * (64 * 1024)})

    assert ws.wait_closed() == 1009


@pytest.mark.slow  # a thousand subscribes
def test_a_socket_follows_at_most_1000_tasks(shared: Relay, open_ws: OpenWs, redis_server: RedisServer) -> None:
    with ThreadPoolExecutor(8) as pool:  # a few at a time: 1000 one by one take seconds more
        tasks = list(pool.map(lambda i: shared.client.submit("echo", i), range(1000)))
    ws = open_ws()
    for task in tasks:  # one at a time: each answer is read before the next subscribe
        ws.subscribe(task)
        while (frame := ws.recv())["type"] != "subscribed":
            assert frame["type"] == "event"
        assert frame["task_id"] == task["id"]
    one_more = shared.client.submit("echo", "one more")

    ws.subscribe(one_more)
    while (frame := ws.recv())["type"] == "event":
        pass
    assert (frame["type"], frame["code"], frame["task_id"]) == ("error", "too_many_subscriptions", one_more["id"])

    ws.send({"type": "unsubscribe", "task_id": tasks[0]["id"]})
    ws.subscribe(one_more)
    while (frame := ws.recv())["type"] == "event":
        pass
    assert (frame["type"], frame["task_id"]) == ("subscribed", one_more["id"])

    # Closed, the socket leaves every task's presence set at once (else their final events would wait for an
    # ack that cannot come before their webhooks go out).
    ws.close()
    redis = redis_server.client()
    presence = [keys.subscribers(task["id"]) for task in [*tasks, one_more]]
    wait_until(lambda: redis.exists(*presence) == 0, timeout_s=10, message="the presence sets to be left")
    redis.close()


# Metrics.


def test_metrics_count_acked_websocket_deliveries(shared: Relay, open_ws: OpenWs) -> None:
    def acked() -> float:
        text = shared.client.get("/metrics", key=None).text
        return _metric(text, "relay_deliveries_total", channel="websocket", outcome="acked")

    before = acked()
    ws = open_ws()
    task = shared.client.submit("sleep", {"seconds": 0.5}, body=WEBSOCKET)
    ws.subscribe(task)
    assert ws.recv()["type"] == "subscribed"
    ws.events_until_final(task["id"], ack=True)

    wait_until(lambda: acked() == before + 1, timeout_s=10, message="the acked delivery in /metrics")


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not in /metrics")
