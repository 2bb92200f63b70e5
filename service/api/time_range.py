"""The ``since``/``until`` pair that list endpoints take: a range that ends before it starts is refused."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar.exceptions import ValidationException


def check_time_range(since: datetime | None, until: datetime | None) -> None:
    """Refuse (422) a ``since`` later than ``until``, which would silently match nothing.

    Raises:
        ValidationException: naming both times.
    """
    if since is None or until is None:
        return
    if _aware(since) > _aware(until):
        raise ValidationException(
            f"since ({since.isoformat()}) is after until ({until.isoformat()}): nothing can match; swap them"
        )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # times without an offset are UTC
