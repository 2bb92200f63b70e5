"""How /v1/stats turns counters and their kept snapshots into percentiles and rates."""

from __future__ import annotations

import pytest

from delivery import metrics
from schemas.deliveries import Channel, DeliveryOutcome
from service.api.routes.stats import _latency, _rates, _Snapshot


def buckets(**per_bound: int) -> dict[str, int]:
    """Latency counts by bucket bound, given as b0_005=3 for the 0.005 s bucket."""
    return {metrics.tenant_latency_field(k.removeprefix("b").replace("_", ".")): n for k, n in per_bound.items()}


def test_percentiles_are_the_upper_bounds_of_the_buckets_that_hold_them() -> None:
    counts = buckets(b0_005=90, b0_05=9, b1_0=1)
    latency = _latency(counts)
    assert (latency.p50_ms, latency.p99_ms, latency.delivered) == (5.0, 50.0, 100)
    assert _latency({}).p50_ms is None


def test_a_delivery_slower_than_every_bucket_counts_at_the_last_bound() -> None:
    latency = _latency({metrics.tenant_latency_field("+Inf"): 1})
    assert latency.p99_ms == metrics.LATENCY_BUCKETS_S[-1] * 1000


def test_rates_are_over_the_snapshot_closest_to_a_minute_ago_and_none_without_one() -> None:
    submitted = metrics.task_counter("submitted")
    delivered = metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.DELIVERED)
    now = 1000.0
    counts = {submitted: 700, delivered: 650, **buckets(b0_01=650)}
    kept = [
        _Snapshot(t=now - 2, c={submitted: 690}),  # too recent to say anything
        _Snapshot(t=now - 58, c={submitted: 120, delivered: 100, **buckets(b0_01=100)}),
        _Snapshot(t=now - 75, c={submitted: 0}),
    ]

    rates = _rates(counts, kept, now)

    assert rates is not None
    assert rates.window_s == pytest.approx(58)
    assert rates.tasks_submitted == pytest.approx(580 / 58, abs=0.001)
    assert rates.deliveries == pytest.approx(550 / 58, abs=0.001)
    assert (rates.latency.p50_ms, rates.latency.delivered) == (10.0, 550)
    assert _rates(counts, kept[:1], now) is None
    assert _rates(counts, [], now) is None
