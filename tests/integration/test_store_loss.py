"""A store that lost its data (Redis restarted without its files) is noticed: said once at ERROR by the API and
the worker, /ready answers 503 with the reason until an operator acknowledges it, and the sockets and streams that
follow tasks that no longer exist are told so and end, rather than waiting for events that cannot come."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from delivery import shares
from delivery.epoch import CHECK_INTERVAL_S
from tests.integration.conftest import Relay
from tests.support import RELAY, ROOT, Streamed, WsClient, stream_task, wait_heartbeats_past, wait_until

if TYPE_CHECKING:
    from tests.conftest import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def wipe(redis_server: RedisServer) -> None:
    """Kill Redis, delete its files, start it again: it comes back empty, on the same port."""
    redis_server.kill()
    for path in redis_server.dir.iterdir():
        if path != redis_server.log_path:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    redis_server.start()


@pytest.fixture
def following(relay: Relay) -> Iterator[tuple[dict[str, str], WsClient]]:
    task = relay.client.submit("sleep", {"seconds": 60}, body={"websocket": True})
    ws = WsClient(relay.api.url)
    ws.subscribe(task)
    assert ws.recv()["type"] == "subscribed"
    yield task, ws
    ws.close()


def test_a_store_that_lost_its_data_is_said_once_and_its_followers_are_told(
    relay: Relay, redis_server: RedisServer, following: tuple[dict[str, str], WsClient]
) -> None:
    task, ws = following
    streamed: list[Streamed] = []
    stream_open = threading.Event()

    def opened(stream: Streamed) -> bool:
        if stream.subscribed is not None:
            stream_open.set()
        return False  # read on, to its end

    def follow() -> None:
        streamed.append(stream_task(relay.api.url, task["id"], key=task["ws_token"], until=opened, timeout_s=30))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    others = [relay.client.submit("sleep", {"seconds": 60}) for _ in range(5)]
    assert stream_open.wait(10)
    wait_until(lambda: relay.client.task(task["id"])["status"] == "running", message="the task to run")
    assert relay.client.get("/ready").status_code == 200

    wipe(redis_server)

    # The socket gets an error frame with a code, then the server closes it.
    frames = ws.frames_until_closed(timeout_s=15)
    assert [f["type"] for f in frames][-1:] == ["error"], frames
    assert all(f["type"] == "event" for f in frames[:-1]), frames  # its progress, before the loss
    assert frames[-1]["code"] == "store_lost"
    assert "no longer exist" in frames[-1]["message"]
    assert ws.close_code == 1011

    # The stream gets an error event, then ends.
    reader.join(20)
    assert not reader.is_alive()
    stream = streamed[-1]
    assert stream.ended
    assert [m.event for m in stream.messages][-1:] == ["error"], stream.messages
    assert stream.messages[-1].json()["code"] == "store_lost"
    assert all(m.event == "task.progress" for m in stream.messages[:-1]), stream.messages

    # /ready says why, on and on, until an operator acknowledges it.
    ready = relay.client.get("/ready", key=None)
    assert ready.status_code == 503
    assert "lost its data" in ready.json()["store"]
    assert relay.client.post("/v1/ops/store/acknowledge", key="key-acme").status_code == 403
    acknowledge = [*RELAY, "store", "acknowledge", "--url", relay.api.url, "--token", "admin-token"]
    acknowledged = subprocess.run(acknowledge, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert acknowledged.returncode == 0, acknowledged.stderr
    assert acknowledged.stdout.startswith("acknowledged"), acknowledged.stdout
    assert relay.client.get("/ready", key=None).status_code == 200
    again = relay.client.post("/v1/ops/store/acknowledge", key="admin-token")
    assert again.json() == {"acknowledged": False}

    # Said once at ERROR by each, and the worker does not go on about the task it lost.
    wait_until(lambda: "the store lost its data" in relay.worker.output(), message="the worker to notice")
    for process in (relay.api, relay.worker):
        errors = [line for line in process.output().splitlines() if "the store lost its data" in line]
        assert len(errors) == 1, errors
        assert re.search(r"\bERROR\b", errors[0]), errors
    lines = {t["id"]: lines_about(relay.worker.output(), t["id"]) for t in [task, *others]}
    assert all(len(said) <= 1 for said in lines.values()), lines
    # Past a few sweeps and lease renewals (each about every second, on the loop of the worker's heartbeat), as a
    # heartbeat the worker wrote 3 s later shows: nothing more about them.
    with redis_server.client() as store:
        wait_heartbeats_past(store, time.time() + 3, sets=[shares.WORKERS])
    assert {t: lines_about(relay.worker.output(), t) for t in lines} == lines


def lines_about(output: str, task_id: str) -> list[str]:
    return [line for line in output.splitlines() if task_id in line]


def test_a_redis_restarted_on_its_files_has_lost_nothing(
    relay: Relay, redis_server: RedisServer, following: tuple[dict[str, str], WsClient]
) -> None:
    task, ws = following
    redis_server.kill()  # no last write: the append-only file holds what was acknowledged, the epoch with it
    redis_server.start()

    wait_until(lambda: relay.client.get("/ready", key=None).status_code == 200, message="ready again")
    with redis_server.client() as store:  # past two looks at the epoch (one a second) by every process
        wait_heartbeats_past(store, time.time() + 2 * CHECK_INTERVAL_S)
    assert relay.client.get("/ready", key=None).json()["store"] == "ok"
    assert not ws.closed.is_set()
    ws.subscribe(task)  # the task is still there, and so is the socket (its progress events come meanwhile)
    assert wait_until(lambda: ws.recv()["type"] == "subscribed", timeout_s=10, message="subscribed")
    for process in (relay.api, relay.worker):
        assert "lost its data" not in process.output()
