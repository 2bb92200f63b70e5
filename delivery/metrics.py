"""Cluster-wide counters kept in Redis, so any API node's ``/metrics`` shows every worker's work.

Writers add ``HINCRBY`` commands to pipelines they already send; the reader turns the hash into
Prometheus metric families.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from schemas.deliveries import Channel, DeliveryOutcome
from schemas.tasks import TaskStatus

if TYPE_CHECKING:
    from delivery.destinations import DestinationCounts

# Delivery latency buckets (seconds from the event's creation to its delivery).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def task_counter(status: str) -> str:
    return f"tasks:{status}"


def delivery_counter(channel: Channel, outcome: DeliveryOutcome) -> str:
    return f"deliveries:{channel.value}:{outcome.value}"


DEAD_LETTERED = "dead_letters:total"


def dead_letter_counter(reason: str) -> str:
    """The counter of events dead-lettered for ``reason``."""
    return f"dead_letters:{reason}"


def tenant_latency_field(bucket: str) -> str:
    """A tenant's own latency bucket, kept in its counters hash (``keys.stats_of``)."""
    return f"latency:{bucket}"


REPLAYED = "dead_letters:replayed"
UNREADABLE_RECORDS = "records:unreadable"
REQUEUED = "tasks:requeued"


def latency_bucket(seconds: float) -> str:
    """The field of ``relay:latency`` that counts a delivery this late (buckets are not cumulative there)."""
    index = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
    return repr(LATENCY_BUCKETS_S[index]) if index < len(LATENCY_BUCKETS_S) else "+Inf"


def families(
    stats: Mapping[bytes, bytes],
    latency: Mapping[bytes, bytes],
    *,
    dead_letters: int,
    due: int,
    queued: int | None,
    owed: int = 0,
    destinations: DestinationCounts | None = None,
) -> Iterator[Any]:
    """Prometheus metric families from the raw Redis hashes."""
    counts = {k.decode(): int(float(v)) for k, v in stats.items()}
    tasks = CounterMetricFamily("relay_tasks", "Tasks by what happened to them", labels=["status"])
    for counted in ("submitted", "scheduled", "retried"):  # retried: each failed attempt tried again
        tasks.add_metric([counted], counts.get(task_counter(counted), 0))
    for status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        tasks.add_metric([status.value], counts.get(task_counter(status.value), 0))
    yield tasks

    deliveries = CounterMetricFamily(
        "relay_deliveries", "Delivery attempts by channel and outcome", labels=["channel", "outcome"]
    )
    for channel in Channel:
        for outcome in DeliveryOutcome:
            deliveries.add_metric([channel.value, outcome.value], counts.get(delivery_counter(channel, outcome), 0))
    yield deliveries

    dead_total = CounterMetricFamily("relay_dead_lettered", "Events that became dead letters")
    dead_total.add_metric([], counts.get(DEAD_LETTERED, 0))
    yield dead_total
    replayed = CounterMetricFamily("relay_dead_letters_replayed", "Dead letters sent again by replay")
    replayed.add_metric([], counts.get(REPLAYED, 0))
    yield replayed

    requeued = CounterMetricFamily(
        "relay_tasks_requeued", "Overdue tasks enqueued again (their message or their run was lost)"
    )
    requeued.add_metric([], counts.get(REQUEUED, 0))
    yield requeued
    unreadable = CounterMetricFamily("relay_unreadable_records", "Stored records skipped because they cannot be read")
    unreadable.add_metric([], counts.get(UNREADABLE_RECORDS, 0))
    yield unreadable

    stored = GaugeMetricFamily("relay_dead_letters", "Dead letters stored now")
    stored.add_metric([], dead_letters)
    yield stored

    depth = GaugeMetricFamily("relay_queue_depth", "Work waiting", labels=["queue"])
    depth.add_metric(["webhooks_due"], due + (destinations.owed if destinations else 0))
    depth.add_metric(["tasks_owed"], owed)
    if queued is not None:
        depth.add_metric(["tasks"], queued)
    yield depth

    if destinations is not None:
        states = GaugeMetricFamily("relay_destinations", "Destinations by state", labels=["state"])
        for state, count in destinations.by_state.items():
            states.add_metric([state.value], count)
        yield states
        held = GaugeMetricFamily("relay_webhooks_held", "Webhooks owed to open or paused destinations")
        held.add_metric([], destinations.held)
        yield held

    raw = {k.decode(): float(v) for k, v in latency.items()}
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in LATENCY_BUCKETS_S:
        running += raw.get(repr(bound), 0.0)
        buckets.append((repr(bound), running))
    running += raw.get("+Inf", 0.0)
    buckets.append(("+Inf", running))
    histogram = HistogramMetricFamily(
        "relay_delivery_latency_seconds", "From an event's creation to its delivery (webhook 2xx or socket ack)"
    )
    histogram.add_metric([], buckets, sum_value=raw.get("sum", 0.0))
    yield histogram
