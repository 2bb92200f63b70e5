"""Small bodies of the HTTP API that belong to no other concept."""

from __future__ import annotations

import msgspec


class SigningSecret(msgspec.Struct):
    secret: str


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str
    extra: dict[str, object] | None = None
