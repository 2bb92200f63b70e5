"""What a kind may hand back: its result, each progress message and its error, at most ``RELAY_MAX_RESULT_BYTES``
each (as JSON). Whatever a task hands back is stored in its record and in its event, and sent whole by webhook
and to every reader of the task; one larger than the bound fails the attempt with ``ResultTooLarge`` instead (not
retried: the same work would hand back as much again)."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.tasks import TaskError
from service.kinds import ResultTooLarge

ERROR_TYPE = "ResultTooLarge"

_encode = msgspec.json.Encoder().encode


class ResultLimit:
    """The bound for one attempt; it remembers a progress message it refused, which fails the attempt even if the
    kind catches the exception and goes on."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.refused: TaskError | None = None

    def check_progress(self, message: str | None) -> None:
        """Raises :class:`ResultTooLarge` for a message over the bound."""
        if message is not None and (size := len(_encode(message))) > self.max_bytes:
            self.refused = self._error(f"a progress message of {size:,} bytes")
            raise ResultTooLarge(self.refused.message)

    def check_result(self, result: Any) -> TaskError | None:
        """The error that fails the attempt instead of ``result`` (None: the result may be stored). Raises what
        msgspec raises for a result that cannot be encoded as JSON."""
        if self.refused is not None:
            return self.refused
        size = len(_encode(result))
        return self._error(f"the result, {size:,} bytes,") if size > self.max_bytes else None

    def check_error(self, error: TaskError) -> TaskError:
        """``error``, or the ``ResultTooLarge`` error that replaces it when it is over the bound (or when a progress
        message was refused: that is why the attempt failed)."""
        if self.refused is not None:
            return self.refused
        size = len(_encode(error))
        return self._error(f"its {error.type} error, {size:,} bytes,") if size > self.max_bytes else error

    def _error(self, what: str) -> TaskError:
        return TaskError(type=ERROR_TYPE, message=f"{what} is more than RELAY_MAX_RESULT_BYTES ({self.max_bytes:,})")
