"""Identifiers: a prefix and 16 random bytes in URL-safe base32 (sortable enough, unguessable)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    raw = base64.b32encode(secrets.token_bytes(15)).decode().lower()
    return f"{prefix}_{raw}"


def utcnow() -> datetime:
    return datetime.now(UTC)
