"""``GET /v1/stats`` latency against a real API, worker and receiver: the figures are of the last minutes'
deliveries, in milliseconds within a bucket, not bucket bounds over all time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.support import wait_until

if TYPE_CHECKING:
    from tests.integration.conftest import Relay
    from tests.support import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_S = 1.5


def delivered(relay: Relay, task_ids: list[str], key: str = "key-acme") -> bool:
    return all(
        any(
            a["outcome"] == "delivered"
            for a in relay.client.get(f"/v1/tasks/{t}/deliveries", key=key).json()["attempts"]
        )
        for t in task_ids
    )


def latency(relay: Relay, key: str) -> dict[str, Any]:
    response = relay.client.get("/v1/stats", key=key)
    assert response.status_code == 200, response.text
    return dict(response.json()["latency"])


def test_after_fast_deliveries_the_latency_is_theirs_in_milliseconds_not_the_slow_ones_before(
    relay: Relay, receiver: Receiver
) -> None:
    # Slow ones first, before anything is kept: a receiver that holds each webhook 1.5 s.
    slow_url = receiver.delay("/slow", SLOW_S)
    slow = [relay.client.submit("echo", n, webhook=slow_url)["id"] for n in range(5)]
    wait_until(lambda: delivered(relay, slow), timeout_s=30, message="the slow webhooks delivered")
    for key in ("admin-token", "key-acme"):
        latency(relay, key)  # the first look keeps what the counters say now

    fast_url = receiver.url("/fast")
    fast = [relay.client.submit("echo", n, webhook=fast_url)["id"] for n in range(40)]
    wait_until(lambda: delivered(relay, fast), timeout_s=30, message="the fast webhooks delivered")

    for key in ("admin-token", "key-acme"):
        shown = wait_until(
            lambda key=key: (figures := latency(relay, key))["delivered"] >= 40 and figures,
            timeout_s=10,
            message=f"the fast deliveries counted for {key}",
        )
        assert shown["delivered"] == 40, shown  # the slow ones are not in it
        assert 0 < shown["window_s"] <= 320
        # Each took a few milliseconds to a few hundred on a loaded machine; the slow ones took 1,500 and more.
        assert shown["p50_ms"] is not None, shown
        assert shown["p99_ms"] is not None, shown
        assert 0 < shown["p50_ms"] < 500, shown
        assert shown["p50_ms"] <= shown["p99_ms"] < 1000, shown
        assert shown["p50_ms"] not in (5.0, 10.0, 25.0, 50.0, 100.0, 250.0)  # within a bucket, not its bound
