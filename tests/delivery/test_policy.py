"""What follows a webhook attempt: delivered, a retry after a jittered or receiver-chosen delay, or a dead letter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from delivery.policy import MAX_RETRY_AFTER_S, AttemptResult, Decision, Verdict, decide, parse_retry_after
from schemas.dead_letters import DeadLetterReason

SCHEDULE = (5.0, 300.0, 1800.0)


def attempt(
    status: int | None, *, error: str | None = None, retry_after_s: float | None = None, forbidden: bool = False
) -> AttemptResult:
    return AttemptResult(status, error, 12.5, retry_after_s=retry_after_s, forbidden=forbidden)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered_even_on_the_last_attempt(status: int) -> None:
    for run_attempts in (1, len(SCHEDULE) + 1):
        decision = decide(attempt(status), run_attempts=run_attempts, schedule_s=SCHEDULE)
        assert decision.verdict is Verdict.DELIVERED
        assert decision.reason is None


@pytest.mark.parametrize("status", [199, 300, 302, 400, 404, 500])
def test_non_2xx_answers_are_retried_on_the_schedule(status: int) -> None:
    decision = decide(attempt(status), run_attempts=1, schedule_s=SCHEDULE, jitter=0)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay_s == SCHEDULE[0]


def test_410_dead_letters_at_once_as_endpoint_gone() -> None:
    decision = decide(attempt(410), run_attempts=1, schedule_s=SCHEDULE)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is DeadLetterReason.ENDPOINT_GONE


def test_forbidden_address_dead_letters_at_once() -> None:
    decision = decide(attempt(None, error="forbidden", forbidden=True), run_attempts=1, schedule_s=SCHEDULE)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is DeadLetterReason.FORBIDDEN_ADDRESS


@pytest.mark.parametrize("status", [None, 500, 429])
def test_failure_after_the_last_retry_is_retries_exhausted(status: int | None) -> None:
    result = attempt(status, error="boom", retry_after_s=1.0 if status == 429 else None)
    assert decide(result, run_attempts=len(SCHEDULE), schedule_s=SCHEDULE).verdict is Verdict.RETRY
    decision = decide(result, run_attempts=len(SCHEDULE) + 1, schedule_s=SCHEDULE)
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is DeadLetterReason.RETRIES_EXHAUSTED


def test_an_empty_schedule_means_one_attempt_only() -> None:
    decision = decide(attempt(500), run_attempts=1, schedule_s=())
    assert decision.verdict is Verdict.DEAD
    assert decision.reason is DeadLetterReason.RETRIES_EXHAUSTED


def test_timeouts_and_connection_errors_retry_with_the_delay_for_that_attempt() -> None:
    delays = [
        decide(attempt(None, error="timed out"), run_attempts=n, schedule_s=SCHEDULE, jitter=0).delay_s
        for n in (1, 2, 3)
    ]
    assert delays == list(SCHEDULE)


def test_jitter_stays_within_ten_percent_and_varies() -> None:
    rng = random.Random(1234)
    delays = [decide(attempt(500), run_attempts=2, schedule_s=SCHEDULE, rng=rng).delay_s for _ in range(500)]
    assert all(270.0 <= d <= 330.0 for d in delays)
    assert min(delays) < 285.0 < 315.0 < max(delays)  # it spreads across the band, both ways
    assert len(set(delays)) > 400


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    first = [decide(attempt(500), run_attempts=1, schedule_s=SCHEDULE, rng=random.Random(7)).delay_s for _ in range(3)]
    again = [decide(attempt(500), run_attempts=1, schedule_s=SCHEDULE, rng=random.Random(7)).delay_s for _ in range(3)]
    assert first == again


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_429_and_503_replaces_the_scheduled_delay(status: int) -> None:
    decision = decide(attempt(status, retry_after_s=42.0), run_attempts=1, schedule_s=SCHEDULE, rng=random.Random(1))
    assert decision.verdict is Verdict.RETRY
    assert decision.delay_s == 42.0


def test_retry_after_is_clamped_to_a_day() -> None:
    decision = decide(attempt(429, retry_after_s=10 * 86400.0), run_attempts=1, schedule_s=SCHEDULE)
    assert decision.verdict is Verdict.RETRY
    assert decision.delay_s == MAX_RETRY_AFTER_S == 86400.0


def test_retry_after_on_other_statuses_is_ignored() -> None:
    decision = decide(attempt(500, retry_after_s=42.0), run_attempts=1, schedule_s=SCHEDULE, jitter=0)
    assert decision.delay_s == SCHEDULE[0]


def test_429_without_retry_after_uses_the_schedule() -> None:
    decision = decide(attempt(429), run_attempts=2, schedule_s=SCHEDULE, jitter=0)
    assert decision.delay_s == SCHEDULE[1]


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("120", 120.0), ("  30 ", 30.0), ("86401", 86401.0)])
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_is_seconds_from_now() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert later.endswith("GMT")
    assert parse_retry_after(later, now=now) == 90.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "12abc", "\u00b2", "\u0663"])
def test_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_a_failed_probe_is_owed_again_at_once_and_spends_no_retry() -> None:
    down = AttemptResult(None, "timed out", 1.0)
    assert decide(down, run_attempts=99, schedule_s=(5.0,), probe=True) == Decision(Verdict.RETRY, counted=False)
    gone = AttemptResult(410, "HTTP 410", 1.0)
    assert decide(gone, run_attempts=1, schedule_s=(5.0,), probe=True).verdict is Verdict.DEAD
