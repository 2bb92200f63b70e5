"""Identifiers: a prefix and 16 random bytes in URL-safe base32 (sortable enough, unguessable)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from delivery import keys


def new_id(prefix: str, partition: keys.Partition | None = None) -> str:
    """A new id; with ``partition``, one whose first two characters name it (see delivery.keys)."""
    raw = base64.b32encode(secrets.token_bytes(15)).decode().lower()
    if partition is None:
        return f"{prefix}_{raw}"
    return keys.layout().mark(f"{prefix}_{raw}", partition)


def utcnow() -> datetime:
    return datetime.now(UTC)
