"""What happens after a webhook attempt: delivered, retry later, or dead-letter.

Pure functions of the attempt's outcome and the schedule, so the rules read in one place.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from schemas.dead_letters import DeadLetterReason

# Jitter applied to every scheduled delay: +-10 %.
DEFAULT_JITTER = 0.10
# A Retry-After longer than this is clamped: a receiver cannot park an event for more than a day.
MAX_RETRY_AFTER_S = 86400.0


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    DROPPED = "dropped"  # a WebSocket-only event nobody acked: it stays in the log, nothing more is sent
    NOTED = "noted"  # the attempt is written down and the delivery goes on (an unacked push before its webhook)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay_s: float = 0.0
    reason: DeadLetterReason | None = None
    counted: bool = True  # the attempt uses up one of the webhook's retries (not a probe that found it down)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one webhook attempt came back with."""

    status_code: int | None
    error: str | None
    duration_ms: float
    retry_after_s: float | None = None
    forbidden: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def decide(
    result: AttemptResult,
    *,
    run_attempts: int,
    schedule_s: Sequence[float],
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
    probe: bool = False,
) -> Decision:
    """Decide what follows attempt number ``run_attempts`` (1-based) of the current run.

    The schedule lists the delay before each retry, so a run makes at most ``len(schedule_s) + 1``
    attempts. ``Retry-After`` on 429/503 replaces the scheduled delay but still uses up a retry. A ``probe`` of
    an open destination that found the receiver still down is the destination's failure, not the webhook's: it
    is owed again at once (held with the rest) and uses up none of its retries.
    """
    if result.ok:
        return Decision(Verdict.DELIVERED)
    if result.forbidden:
        return Decision(Verdict.DEAD, reason=DeadLetterReason.FORBIDDEN_ADDRESS)
    if result.status_code == 410:
        return Decision(Verdict.DEAD, reason=DeadLetterReason.ENDPOINT_GONE)
    if probe:
        return Decision(Verdict.RETRY, counted=False)
    if run_attempts > len(schedule_s):
        return Decision(Verdict.DEAD, reason=DeadLetterReason.RETRIES_EXHAUSTED)
    if result.status_code in (429, 503) and result.retry_after_s is not None:
        return Decision(Verdict.RETRY, delay_s=min(result.retry_after_s, MAX_RETRY_AFTER_S))
    delay = schedule_s[run_attempts - 1]
    spread = (rng or random).uniform(-jitter, jitter)
    return Decision(Verdict.RETRY, delay_s=max(0.0, delay * (1 + spread)))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes '²', which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
