"""Destinations: where one tenant's webhooks go (the tenant plus the callback URL's origin), with their flow control."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

# The most attempts in flight a destination may be given, and the slowest and fastest rates (slower than one
# attempt in 100 s would hold a destination's webhooks for days).
MAX_IN_FLIGHT = 1000
MIN_RATE_PER_S = 0.01
MAX_RATE_PER_S = 100_000.0


class DestinationState(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # its last attempt failed, fewer than the breaker's threshold in a row
    OPEN = "open"  # the breaker is open: webhooks are held, one probe at a time
    PAUSED = "paused"  # held by an operator or its owner


class Destination(msgspec.Struct):
    id: str
    tenant: str
    origin: str
    state: DestinationState
    max_in_flight: int
    rate_per_s: float | None
    in_flight: int
    owed: int  # webhooks waiting, held or due, in flight included
    consecutive_failures: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    opened_at: datetime | None
    next_probe_at: datetime | None


class DestinationPage(msgspec.Struct):
    items: list[Destination]
    next_cursor: str | None


class DestinationCaps(msgspec.Struct, forbid_unknown_fields=True):
    """``PATCH /v1/destinations/{id}``: a field left out is left as it is; ``rate_per_s: null`` removes the rate."""

    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=MAX_IN_FLIGHT)] | msgspec.UnsetType = msgspec.UNSET
    rate_per_s: Annotated[float, msgspec.Meta(ge=MIN_RATE_PER_S, le=MAX_RATE_PER_S)] | msgspec.UnsetType | None = (
        msgspec.UNSET
    )


class OpsEvent(msgspec.Struct):
    """An operational event, POSTed to ``RELAY_OPS_WEBHOOK_URL``."""

    id: str
    type: str  # destination.opened | destination.recovered
    created_at: datetime
    data: Destination
