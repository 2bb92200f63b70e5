"""JSON bodies read strictly: a value of the wrong JSON type is a 422 that names its field.

Litestar converts a request body to its type leniently (``"websocket": 1`` is true, ``"delay_s": "5"`` is 5,
``"run_at": 12345`` a unix time, ``"dry_run": "false"`` false, ``"max_in_flight": "7"`` 7). The app reads every
body again here with a strict msgspec decoder of its route's body type, before the route runs (see
``check_body`` in :mod:`service.api.app`): what a client meant is never guessed. Only a value of the wrong JSON
type is refused here; the other faults (a bound, an unknown field, a bad URL) are left to the route's own
decoding, which names them as it always has.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import msgspec
from litestar.exceptions import ValidationException

__all__ = ["check_strictly"]

_AT_FIELD = re.compile(r"^(Expected .*) - at `\$\.([^`]+)`$")
# Fields that take a time: their 422 says which form one takes.
_TIME_FIELDS = frozenset({"run_at", "since", "until"})


@functools.cache
def _decoder(body_type: type[msgspec.Struct]) -> Callable[[bytes], Any]:
    return msgspec.json.Decoder(body_type).decode  # strict by default


def check_strictly(body: bytes, body_type: type[msgspec.Struct]) -> None:
    """Raises a 422 naming the field when ``body`` has a value of the wrong JSON type for ``body_type`` (a
    Struct; its fields may be a subset of the body's, the others are skipped)."""
    try:
        _decoder(body_type)(body)
    except msgspec.ValidationError as exc:
        match = _AT_FIELD.match(str(exc))
        if match is None:
            return  # not a wrong type: the route's own decoding says what is wrong, as it always has
        reason, field = match.groups()
        reason = reason[:1].lower() + reason[1:]
        if field.rsplit(".", 1)[-1] in _TIME_FIELDS:
            reason = "give an RFC 3339 time with its offset (2026-12-24T18:00:00Z); " + reason
        raise ValidationException(f"{field}: {reason}") from None
    except msgspec.DecodeError:
        pass  # not JSON: the body's own decoding has refused it already
