"""How the clients retry: the policy a caller may tune (:class:`Retries`) and the decisions of one call
(:class:`Retrier`), pure but for a clock and a random source that tests pass in."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay_client import errors

# Retries of one call stop this long after its first attempt: what is still failing then is raised.
DEFAULT_RETRY_DEADLINE_S = 60.0
# The first backoff, doubled after each failure up to the second (each wait jittered between half and all of it).
DEFAULT_BACKOFF_INITIAL_S = 0.25
DEFAULT_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, kw_only=True)
class Retries:
    """How calls that are safe to repeat (reads and submissions, which always carry an ``Idempotency-Key``) are
    retried on connection errors, timeouts, 429 and 503: exponential backoff with jitter that waits at least what
    ``Retry-After`` asks, until ``deadline_s`` after the first attempt. Nothing else is ever retried.

    Attributes:
        deadline_s: Give up (raise the last error) once this long has passed since the first attempt, or when the
            next wait would end past it. 0 turns retries off.
        initial_s: The first backoff.
        max_s: The longest backoff (a ``Retry-After`` may ask for more, within the deadline).
        connect: Retry when no connection could be made (:class:`ConnectError`: nothing was sent). False raises it
            at once, as curl does without ``--retry-connrefused``: for a person at a terminal, a URL where nothing
            listens is better told now than after the deadline.
        on_retry: Called before each wait with the error and the wait, to log retries or show them to a person (a
            retry is otherwise silent). What it raises is raised to the caller instead of retrying.
    """

    deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    max_s: float = DEFAULT_BACKOFF_MAX_S
    connect: bool = True
    on_retry: Callable[[errors.RelayError, float], None] | None = None

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("Retries: need deadline_s >= 0 and 0 < initial_s <= max_s")


DEFAULT_RETRIES = Retries()
NO_RETRIES = Retries(deadline_s=0)


# The jitter of every call's backoff: one source, not one seeded per call.
_RANDOM = random.Random()


class Retrier:
    """The retry decisions of one call: after each failure, how long to wait before the next attempt, or None to
    give up. Pure apart from its clock and random source, which tests pass in.
    """

    def __init__(
        self,
        policy: Retries,
        *,
        safe: bool,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._safe = safe
        self._clock = clock
        self._rng = rng or _RANDOM
        self._outer_deadline = deadline
        self.reset()

    def reset(self) -> None:
        """Progress was made (a stream delivered events): the backoff and the deadline start again."""
        self._failures = 0
        self._started = self._clock()
        own = self._started + self._policy.deadline_s
        self._deadline = own if self._outer_deadline is None else min(own, self._outer_deadline)

    @property
    def tries(self) -> int:
        """The tries since the start (or the last :meth:`reset`), the one that just failed with them."""
        return self._failures + 1

    def elapsed_s(self) -> float:
        """Seconds since the start (or the last :meth:`reset`)."""
        return self._clock() - self._started

    def delay_s(self, error: errors.RelayError) -> float | None:
        """The wait before retrying after ``error``, or None when it must be raised."""
        if not self._safe or not retryable(error):
            return None
        if isinstance(error, errors.ConnectError) and not self._policy.connect:
            return None
        base = min(self._policy.max_s, self._policy.initial_s * 2.0**self._failures)
        self._failures += 1
        wait = base / 2 + self._rng.uniform(0, base / 2)
        if isinstance(error, errors.RateLimited | errors.Unavailable) and error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        if self._clock() + wait > self._deadline:
            return None
        if self._policy.on_retry is not None:
            self._policy.on_retry(error, wait)
        return wait


def retryable(error: errors.RelayError) -> bool:
    """Whether trying the same request again may fix ``error`` (for a request that is safe to repeat)."""
    return isinstance(error, (errors.TransportError, errors.RateLimited, errors.Unavailable))


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
