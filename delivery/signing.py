"""Standard Webhooks signing (https://www.standardwebhooks.com/).

A secret is ``whsec_`` followed by base64 key bytes. Each delivery carries ``webhook-id``, ``webhook-timestamp``
and ``webhook-signature``; the signature is ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``.
While a secret is being rotated both are live, and the header carries one space-separated signature per secret so
a receiver holding either one verifies.

Secrets are never logged, formatted into messages or kept in a repr here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence

from delivery.errors import InvalidSecret

__all__ = [
    "SECRET_BYTES",
    "SECRET_PREFIX",
    "generate_secret",
    "secret_bytes",
    "sign",
    "signature_header",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format marker, not a secret
# The spec asks for 24 to 64 random bytes; 32 matches the HMAC-SHA256 output size.
SECRET_BYTES = 32


def generate_secret() -> str:
    """Return a new random signing secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode("ascii")


# Signing runs for every delivery, ~1,000+ a second; decoding the same few live secrets each time is waste.
@functools.lru_cache(maxsize=1024)
def secret_bytes(secret: str) -> bytes:
    """Decode a secret to its HMAC key bytes.

    Args:
        secret: ``whsec_`` + base64 (the prefix is optional, as in the reference libraries).

    Returns:
        The key bytes.

    Raises:
        ValueError: The secret is not valid base64 or decodes to no bytes. The message never contains the secret.
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    # Receivers' libraries accept unpadded base64, so an unpadded secret must sign the same way.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        # from None: the chained error's message could quote the secret.
        raise InvalidSecret("webhook secret is not valid base64") from None
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Sign one message with one secret.

    Args:
        secret: ``whsec_`` + base64 key.
        msg_id: The ``webhook-id``, unique per message and stable across retries.
        timestamp: The ``webhook-timestamp``, Unix seconds of this attempt.
        body: The exact bytes sent as the request body.

    Returns:
        ``v1,`` + base64 HMAC-SHA256 signature.

    Raises:
        ValueError: The secret cannot be decoded.
    """
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Build the ``webhook-signature`` value: one signature per live secret, space-separated.

    Args:
        secrets: The endpoint's live secrets (two while rotating).
        msg_id: The ``webhook-id``.
        timestamp: The ``webhook-timestamp``, Unix seconds.
        body: The exact request body.

    Returns:
        The header value.

    Raises:
        ValueError: No secrets, or a secret cannot be decoded.
    """
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def webhook_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes, *, user_agent: str
) -> dict[str, str]:
    """Build the full set of headers for one delivery attempt.

    Args:
        secrets: The endpoint's live secrets.
        msg_id: The ``webhook-id``.
        timestamp: The ``webhook-timestamp``, Unix seconds.
        body: The exact JSON request body.
        user_agent: The ``user-agent`` to send.

    Returns:
        ``content-type``, ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` and ``user-agent``.

    Raises:
        ValueError: No secrets, or a secret cannot be decoded.
    """
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "user-agent": user_agent,
    }
