"""Small bodies of the HTTP API that belong to no other concept."""

from __future__ import annotations

import msgspec

# No id Relay makes is longer than this (a prefix and 24 characters): a longer one is not looked up.
MAX_ID_CHARS = 64
# Items a list page holds unless ``limit`` says otherwise, and the most it may ask for.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class SigningSecret(msgspec.Struct):
    secret: str


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str
    extra: dict[str, object] | None = None
