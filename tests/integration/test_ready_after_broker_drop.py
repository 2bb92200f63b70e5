"""An API process whose RabbitMQ connection the broker closed is ready again once the broker answers."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.integration.conftest import StartRelay
from tests.support import wait_until

pytestmark = [pytest.mark.rabbitmq]


def _close_connections_of(vhost: str) -> int:
    """Close every connection to ``vhost`` from the broker's side, as a broker restart or a missed heartbeat does."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "pid", "vhost"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pids = [line.split()[0] for line in listed.splitlines() if line.split()[1:] == [vhost]]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "closed by the test"], check=True, timeout=60)
    return len(pids)


def test_ready_answers_200_again_once_the_broker_is_back_without_a_submission(
    start_relay: StartRelay, rabbitmq_url: str
) -> None:
    api = start_relay("api", RELAY_BROKER_URL=rabbitmq_url)
    ready = api.url + "/ready"
    wait_until(lambda: httpx.get(ready, timeout=5).status_code == 200, timeout_s=20, message="/ready 200")

    vhost = rabbitmq_url.rsplit("/", 1)[1]
    assert _close_connections_of(vhost) >= 1
    wait_until(lambda: httpx.get(ready, timeout=5).status_code == 503, timeout_s=20, message="/ready 503")

    # RabbitMQ answers all along: the node should find that out by itself, not only when a submission reconnects.
    wait_until(
        lambda: httpx.get(ready, timeout=5).status_code == 200,
        timeout_s=30,
        interval_s=1,
        message="/ready 200 again after the broker closed the connection",
    )
