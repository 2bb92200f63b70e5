"""Figures for dashboards: ``GET /v1/stats``."""

from __future__ import annotations

import msgspec


class TaskCounts(msgspec.Struct):
    """Tasks counted since the store began (``open`` is now: accepted and not ended)."""

    submitted: int
    scheduled: int  # submitted with run_at or delay_s
    retried: int  # failed attempts whose work was tried again
    succeeded: int
    failed: int
    cancelled: int
    open: int  # queued, scheduled or running now


class Stats(msgspec.Struct):
    tenant: str | None  # whose figures these are (None: every tenant's)
    tasks: TaskCounts
