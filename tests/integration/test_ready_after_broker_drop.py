"""Relay's connections to RabbitMQ: opened again when the broker closes them, and kept alive while idle."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.integration.conftest import StartRelay
from tests.support import wait_until

# Connections dropped by the broker, and idle past its heartbeat: fault tests, out of the quick run.
pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

# A heartbeat short enough that RabbitMQ drops, within seconds, a connection nobody services.
HEARTBEAT_S = 4


def _connections_of(vhost: str) -> dict[str, int]:
    """The connections RabbitMQ holds for ``vhost``: each one's id and how many times it read from its client."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "vhost", "recv_cnt"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows = [line.split() for line in listed.splitlines()]
    return {row[0]: int(row[2]) for row in rows if len(row) == 3 and row[1] == vhost}


def _close_connections_of(vhost: str) -> set[str]:
    """Close every connection to ``vhost`` from the broker's side, as a broker restart or a missed heartbeat does."""
    pids = set(_connections_of(vhost))
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "closed by the test"], check=True, timeout=60)
    return pids


def test_ready_answers_200_again_once_the_broker_is_back_without_a_submission(
    start_relay: StartRelay, rabbitmq_url: str
) -> None:
    api = start_relay("api", RELAY_BROKER_URL=rabbitmq_url)
    ready = api.url + "/ready"
    wait_until(lambda: httpx.get(ready, timeout=5).status_code == 200, timeout_s=20, message="/ready 200")

    vhost = rabbitmq_url.rsplit("/", 1)[1]
    closed = _close_connections_of(vhost)
    assert closed
    wait_until(lambda: not closed & set(_connections_of(vhost)), timeout_s=20, message="the connections closed")

    # RabbitMQ answers all along: the ping opens a new connection, as a submission does (none is made here).
    wait_until(
        lambda: httpx.get(ready, timeout=5).status_code == 200,
        timeout_s=10,
        interval_s=0.5,
        message="/ready 200 again after the broker closed the connection",
    )
    assert set(_connections_of(vhost)) - closed, "the API holds a new connection"


def _kept_alive(vhost: str, first: dict[str, int]) -> bool:
    """Every connection in ``first`` is still open and has read at least three frames (heartbeats) since."""
    now = _connections_of(vhost)
    missing = set(first) - set(now)
    assert not missing, f"RabbitMQ dropped {len(missing)} of {len(first)} idle connections"
    return all(now[pid] >= first[pid] + 3 for pid in first)


def test_an_idle_api_keeps_its_connection_alive(start_relay: StartRelay, rabbitmq_url: str) -> None:
    api = start_relay("api", RELAY_BROKER_URL=f"{rabbitmq_url}?heartbeat={HEARTBEAT_S}")
    wait_until(lambda: httpx.get(api.url + "/ready", timeout=5).status_code == 200, timeout_s=20, message="ready")
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    first = _connections_of(vhost)
    assert first

    # Nothing is asked of the API from here on: only its own servicing of the connection makes it read.
    wait_until(lambda: _kept_alive(vhost, first), timeout_s=8 * HEARTBEAT_S, interval_s=1, message="heartbeats")


def test_an_idle_worker_keeps_every_connection_alive(start_relay: StartRelay, rabbitmq_url: str) -> None:
    start_relay("worker", RELAY_BROKER_URL=f"{rabbitmq_url}?heartbeat={HEARTBEAT_S}")
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    # The consumers' two connections and the one the worker's own enqueues go through.
    first = wait_until(lambda: (c := _connections_of(vhost)) and len(c) >= 3 and c, timeout_s=20, message="connected")

    wait_until(lambda: _kept_alive(vhost, first), timeout_s=8 * HEARTBEAT_S, interval_s=1, message="heartbeats")
