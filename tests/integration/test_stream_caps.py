"""Caps on open WebSockets and event streams against real processes: per client address, where the address is
the one the trusted proxies saw (never an X-Forwarded-For entry the client wrote itself), and per tenant across
every API node (RELAY_TENANT_MAX_STREAMS)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import StartRelay
from tests.support import Api, WsClient, wait_until

# No worker runs: the tasks stay queued, so their streams stay open for as long as a test holds them.


class Streams:
    """Event streams held open until the test ends (each read up to its ``subscribed`` event, so it is counted)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._http = stack.enter_context(httpx.Client(timeout=10))
        self._readers: list[Iterator[bytes]] = []  # kept: a reader dropped closes its stream

    def open(self, base_url: str, task: dict[str, Any], **headers: str) -> httpx.Response:
        url = f"{base_url}/v1/tasks/{task['id']}/stream"
        response = self._stack.enter_context(
            self._http.stream("GET", url, params={"token": task["ws_token"]}, headers=headers)
        )
        if response.status_code == 200:
            reader = response.iter_raw()
            assert next(reader).startswith(b"event: subscribed")
            self._readers.append(reader)
        else:
            response.read()
        return response


@pytest.fixture
def streams() -> Iterator[Streams]:
    with contextlib.ExitStack() as stack:
        yield Streams(stack)


def forwarded(*hops: str) -> dict[str, str]:
    return {"X-Forwarded-For": ", ".join(hops)}


def test_behind_one_proxy_a_client_cannot_pass_for_many_by_writing_x_forwarded_for(
    start_relay: StartRelay, streams: Streams
) -> None:
    api = start_relay("api", RELAY_TRUST_FORWARDED="true", RELAY_WS_MAX_PER_CLIENT="2")
    client = Api(api.url)
    task = client.submit("echo", "held")

    # The proxy (this test, the peer) appends the address it saw: the client's own entries stand to its left.
    for n in (1, 2):
        assert streams.open(api.url, task, **forwarded(f"10.9.9.{n}", "203.0.113.7")).status_code == 200
    refused = streams.open(api.url, task, **forwarded("10.9.9.3", "203.0.113.7"))
    assert refused.status_code == 429
    assert "RELAY_WS_MAX_PER_CLIENT" in refused.json()["detail"]
    # Another client behind the same proxy is not held up by the first.
    assert streams.open(api.url, task, **forwarded("10.9.9.1", "203.0.113.8")).status_code == 200

    # Sockets the same.
    sockets = [WsClient(api.url, additional_headers=forwarded(f"10.9.9.{n}", "198.51.100.7")) for n in range(1, 4)]
    try:
        assert sockets[2].wait_closed() == 1013
        assert not sockets[0].closed.is_set()
        assert not sockets[1].closed.is_set()
    finally:
        for ws in sockets:
            ws.close()
    client.close()


def test_without_trusted_proxies_x_forwarded_for_is_ignored(start_relay: StartRelay, streams: Streams) -> None:
    api = start_relay("api", RELAY_WS_MAX_PER_CLIENT="1")
    client = Api(api.url)
    task = client.submit("echo", "held")

    assert streams.open(api.url, task, **forwarded("203.0.113.1")).status_code == 200
    assert streams.open(api.url, task, **forwarded("203.0.113.2")).status_code == 429  # the same peer
    client.close()


def test_behind_n_proxies_the_client_is_the_entry_the_outermost_one_added(
    start_relay: StartRelay, streams: Streams
) -> None:
    api = start_relay("api", RELAY_TRUST_FORWARDED="2", RELAY_WS_MAX_PER_CLIENT="1")
    client = Api(api.url)
    task = client.submit("echo", "held")

    # client-written entry, the client as the outer proxy saw it, the outer proxy as the inner one saw it.
    assert streams.open(api.url, task, **forwarded("10.9.9.1", "198.51.100.4", "10.0.0.2")).status_code == 200
    refused = streams.open(api.url, task, **forwarded("10.9.9.2", "198.51.100.4", "10.0.0.3"))
    assert refused.status_code == 429
    assert streams.open(api.url, task, **forwarded("10.9.9.2", "198.51.100.5", "10.0.0.3")).status_code == 200
    # Fewer entries than trusted proxies: it did not come through them all, and none of its entries is trusted:
    # the peer is the client (one place for every such request).
    assert streams.open(api.url, task, **forwarded("192.0.2.1")).status_code == 200
    assert streams.open(api.url, task, **forwarded("192.0.2.2")).status_code == 429
    client.close()


def test_a_tenant_has_at_most_its_cap_of_sockets_and_streams_across_api_nodes(
    start_relay: StartRelay, streams: Streams
) -> None:
    env = {"RELAY_TENANT_MAX_STREAMS": "2"}
    first, second = start_relay("api", wait=False, **env), start_relay("api", wait=False, **env)
    first.wait_ready()
    second.wait_ready()
    client = Api(first.url)
    acme = client.submit("echo", "held", body={"websocket": True})
    globex = client.submit("echo", "held", key="key-globex", body={"websocket": True})

    held = streams.open(first.url, acme)
    assert held.status_code == 200
    socket = WsClient(second.url)
    socket.subscribe(acme)
    assert socket.recv()["type"] == "subscribed"

    # Both places are taken, one on each node: a third is refused on either node, a stream with 429 ...
    refused = streams.open(second.url, acme)
    assert refused.status_code == 429
    assert "RELAY_TENANT_MAX_STREAMS" in refused.json()["detail"]
    # ... and a socket with close 1013 at its first subscribe to the tenant's tasks.
    late = WsClient(first.url)
    late.subscribe(acme)
    assert late.wait_closed() == 1013
    # Another tenant is not held up by this one.
    assert streams.open(second.url, globex).status_code == 200
    other = WsClient(first.url)
    other.subscribe(globex)
    assert other.recv()["type"] == "subscribed"

    # A socket that closes gives its place back, on whichever node.
    socket.close()
    wait_until(lambda: streams.open(first.url, acme).status_code == 200, timeout_s=10, message="a place free again")
    for ws in (late, other):
        ws.close()
    client.close()
