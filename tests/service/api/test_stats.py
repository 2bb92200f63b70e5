"""How /v1/stats turns counters and their kept snapshots into percentiles and rates."""

from __future__ import annotations

import pytest

from delivery import metrics
from schemas.deliveries import Channel, DeliveryOutcome
from service.api.routes.stats import LATENCY_WINDOW_S, _latency, _rates, _recent_latency, _Snapshot, histogram_quantile


def buckets(**per_bound: int) -> dict[str, int]:
    """Latency counts by bucket bound, given as b0_005=3 for the 0.005 s bucket."""
    return {metrics.tenant_latency_field(k.removeprefix("b").replace("_", ".")): n for k, n in per_bound.items()}


INF = float("inf")


def test_a_quantile_is_interpolated_within_its_bucket_as_prometheus_does() -> None:
    # Cumulative buckets as Prometheus keeps them: 0-1: 10, 1-2: 30, 2-4: 60, above 4: 0.
    buckets = [(1.0, 10.0), (2.0, 40.0), (4.0, 100.0), (INF, 100.0)]
    assert histogram_quantile(0.1, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.25, buckets) == pytest.approx(1.5)  # rank 25: halfway through 1-2
    assert histogram_quantile(0.5, buckets) == pytest.approx(2 + 2 * 10 / 60)
    assert histogram_quantile(0.99, buckets) == pytest.approx(2 + 2 * 59 / 60)
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.5)  # the first bucket starts at 0


def test_a_quantile_in_the_open_bucket_is_the_highest_finite_bound_and_none_without_observations() -> None:
    assert histogram_quantile(0.99, [(1.0, 10.0), (2.0, 50.0), (INF, 100.0)]) == 2.0
    assert histogram_quantile(0.5, [(1.0, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_fast_deliveries_show_milliseconds_inside_the_first_buckets_not_their_bounds() -> None:
    # 90 deliveries under 5 ms, 9 between 25 and 50 ms, 1 between 0.5 and 1 s.
    latency = _latency(buckets(b0_005=90, b0_05=9, b1_0=1))
    assert latency.delivered == 100
    assert latency.p50_ms == pytest.approx(5 * 50 / 90, abs=0.001)
    assert latency.p99_ms == pytest.approx(25 + 25 * 9 / 9, abs=0.001)
    assert _latency({}).p50_ms is None


def test_a_delivery_slower_than_every_bucket_counts_at_the_last_bound() -> None:
    latency = _latency({metrics.tenant_latency_field("+Inf"): 1})
    assert latency.p99_ms == metrics.LATENCY_BUCKETS_S[-1] * 1000


def test_latency_is_of_the_last_minutes_only_since_the_oldest_snapshot_within_them() -> None:
    now = 10_000.0
    # Long ago, slow deliveries (replays of old events): 500 of them above 30 s.
    old = buckets(b60_0=500)
    counts = buckets(b60_0=500, b0_005=40, b0_01=60)
    kept = [
        _Snapshot(t=now - 3, c=buckets(b60_0=500, b0_005=40, b0_01=50)),
        _Snapshot(t=now - 200, c=old),
        _Snapshot(t=now - LATENCY_WINDOW_S - 100, c={}),  # too old: the slow ones would count again
    ]

    latency = _recent_latency(counts, kept, now)

    assert latency.delivered == 100
    assert latency.window_s == pytest.approx(200)
    assert latency.p50_ms == pytest.approx(5 + 5 * 10 / 60, abs=0.001)
    assert latency.p99_ms is not None
    assert latency.p99_ms < 10
    nothing = _recent_latency(counts, [], now)  # nothing kept yet: no figure rather than one since the store began
    assert (nothing.p50_ms, nothing.delivered) == (None, 0)


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
    assert rates.latency.delivered == 550
    assert rates.latency.p50_ms == pytest.approx(5 + 5 * 275 / 550)  # within the 5-10 ms bucket
    assert rates.latency.window_s == pytest.approx(58)
    assert _rates(counts, kept[:1], now) is None
    assert _rates(counts, [], now) is None
