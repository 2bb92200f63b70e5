"""Small bodies of the HTTP API that belong to no other concept."""

from __future__ import annotations

from typing import Any

import msgspec

# No id Relay makes is longer than this (a prefix and 24 characters): a longer one is not looked up.
MAX_ID_CHARS = 64
# Items a list page holds unless ``limit`` says otherwise, and the most it may ask for.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class SigningSecret(msgspec.Struct):
    secret: str


class ErrorBody(msgspec.Struct):
    """Every error answer: its status, what went wrong for a person to read, and for a request that does not fit
    (422) the problems one by one (``[{"message", "key", "source"}]``)."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None
