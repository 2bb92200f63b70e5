"""Every path answers HEAD where it answers GET, and its OPTIONS answer (a CORS preflight's too) and its 405s list
every method it takes, on a real `relay api`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import RedisServer
from tests.support import Api, RelayProcess, relay_env


@dataclass
class ApiOnly:
    api: RelayProcess
    client: Api


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[ApiOnly]:
    """One `relay api` for the module (no worker: nothing here runs a task)."""
    if not redis_server.running:
        redis_server.start()
    api = RelayProcess("api", relay_env(redis_server.url)).start()
    client = Api(api.url)
    try:
        yield ApiOnly(api=api, client=client)
    finally:
        client.close()
        api.stop()
        api.log_path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/tasks", "GET, HEAD, OPTIONS, POST"),
        ("/v1/tasks/task_x", "GET, HEAD, OPTIONS"),
        ("/v1/tasks/task_x/cancel", "OPTIONS, POST"),
        ("/v1/dead-letters/dl_x", "DELETE, GET, HEAD, OPTIONS"),
        ("/v1/destinations/dst_x", "GET, HEAD, OPTIONS, PATCH"),
        ("/console", "GET, HEAD, OPTIONS"),
    ],
)
def test_a_preflight_lists_every_method_of_its_path(shared: ApiOnly, path: str, allow: str) -> None:
    preflight = shared.client.request(
        "OPTIONS",
        path,
        key=None,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["allow"] == allow


def test_a_method_a_path_does_not_take_gets_405_listing_those_it_does(shared: ApiOnly) -> None:
    refused = shared.client.request("PUT", "/v1/tasks", key=None)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert shared.client.request("DELETE", "/console", key=None).headers["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    "path", ["/console", "/", "/health", "/ready", "/metrics", "/schema/swagger", "/schema/openapi.json"]
)
def test_head_answers_as_get_does_without_the_body(shared: ApiOnly, path: str) -> None:
    for _ in range(3):  # /ready answers 503 when a check takes over 0.8 s, as it may on a loaded machine
        head = shared.client.request("HEAD", path, key=None)
        get = shared.client.get(path, key=None)
        if head.status_code == get.status_code == 200:
            break
    assert head.status_code == get.status_code == 200, get.text
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path not in ("/metrics", "/ready"):  # their bodies change from one request to the next
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


def test_head_of_an_api_path_answers_as_its_get(shared: ApiOnly) -> None:
    assert shared.client.request("HEAD", "/v1/tasks", key=None).status_code == 401
    assert shared.client.request("HEAD", "/v1/tasks").status_code == 200
    assert shared.client.request("HEAD", "/v1/tasks/task_nosuchtask000000000000").status_code == 404


def test_head_of_a_stream_ends_at_once_and_holds_no_stream(shared: ApiOnly) -> None:
    task = shared.client.submit("echo", "later", body={"delay_s": 60})
    started = time.monotonic()
    head = shared.client.request("HEAD", f"/v1/tasks/{task['id']}/stream", key=None, params={"token": task["ws_token"]})
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.content == b""
    assert time.monotonic() - started < 5  # not held open until the task ends (a minute from now)

    def open_streams() -> float:
        for line in httpx.get(shared.api.url + "/metrics").text.splitlines():
            if line.startswith('relay_live_connections{channel="sse"}'):
                return float(line.split()[-1])
        raise AssertionError("no relay_live_connections metric")

    deadline = time.monotonic() + 5
    while open_streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_streams() == 0
    assert shared.client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 202
