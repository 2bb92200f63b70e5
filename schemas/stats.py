"""Figures for dashboards: ``GET /v1/stats``."""

from __future__ import annotations

from datetime import datetime

import msgspec


class TaskCounts(msgspec.Struct):
    """Tasks counted since the store began (``scheduled`` and ``open`` are now)."""

    submitted: int
    scheduled: int  # waiting now for a run_at still ahead (a scheduled submission, or a retry of the work)
    retried: int  # failed attempts whose work was tried again
    succeeded: int
    failed: int
    cancelled: int
    open: int  # queued, scheduled or running now


class Webhooks(msgspec.Struct):
    owed: int  # waiting, held or in flight at their destinations
    held: int  # of those, the ones an open or paused destination holds


class DeadLetters(msgspec.Struct):
    stored: int  # kept now
    by_reason: dict[str, int]  # dead-lettered since the store began, by reason


class Latency(msgspec.Struct):
    """From an event's creation to its delivery (a webhook's 2xx or a socket's ack), of the deliveries in the last
    ``window_s``: the median and the 99th percentile, interpolated within the histogram's buckets as Prometheus's
    ``histogram_quantile`` does (None with nothing delivered in that time)."""

    p50_ms: float | None
    p99_ms: float | None
    delivered: int  # deliveries these are over
    window_s: float | None = None  # the time they cover, up to about five minutes back (0: none kept yet)


class Rates(msgspec.Struct):
    """Per second, over ``window_s`` (about the last minute)."""

    window_s: float
    tasks_submitted: float
    tasks_ended: float  # succeeded, failed or cancelled
    tasks_retried: float
    deliveries: float  # webhooks delivered and pushes acked
    webhook_failures: float  # failed webhook attempts
    dead_lettered: float
    latency: Latency  # of the deliveries in the window


class Stats(msgspec.Struct):
    tenant: str | None  # whose figures these are (None: every tenant's)
    at: datetime
    tasks: TaskCounts
    deliveries: dict[str, dict[str, int]]  # channel -> outcome -> attempts since the store began
    webhooks: Webhooks
    dead_letters: DeadLetters
    destinations: dict[str, int]  # by state
    queue_depth: int | None  # task messages waiting in the broker (None: a broker that does not say cheaply)
    latency: Latency  # over about the last five minutes
    rates: Rates | None  # None until figures from about a minute ago are kept (the first poll starts them)
