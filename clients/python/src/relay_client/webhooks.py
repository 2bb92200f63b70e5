"""Verifying the webhooks Relay sends, for receivers (Standard Webhooks, https://www.standardwebhooks.com/).

Relay signs ``{webhook-id}.{webhook-timestamp}.{body}`` with HMAC-SHA256 under the tenant's secret (``whsec_`` and
base64) and sends ``webhook-signature: v1,<base64>``, one space-separated signature per live secret while a secret
is being rotated. Verify the body exactly as it arrived (bytes, before any JSON parsing), then dedupe on the
event's ``id`` (the same as ``webhook-id``): delivery is at least once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Mapping, Sequence

import msgspec

from relay_client.errors import WebhookVerificationError
from relay_client.types import Event

__all__ = ["DEFAULT_TOLERANCE_S", "MAX_SIGNATURES", "verify_webhook"]

# A webhook whose timestamp is further than this from the receiver's clock, either way, is refused (a replay of
# an old request, or a clock badly off).
DEFAULT_TOLERANCE_S = 300
# The most signatures one webhook-signature header may carry. Relay sends one, two while a secret is rotated; each
# costs an HMAC per secret, so a header of thousands would cost seconds of CPU per request.
MAX_SIGNATURES = 16
# The most digits of a webhook-timestamp: unix seconds have 10 until the year 2286; hundreds of digits would
# overflow a float (an OverflowError, a 500 in the receiver) before being refused as stale.
MAX_TIMESTAMP_DIGITS = 12
SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format's marker, not a secret

_event = msgspec.json.Decoder(Event)


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Event:
    """Check that a webhook came from Relay, unaltered and recent, and return its Event.

    Args:
        body: The request body, exactly the bytes received.
        headers: The request's headers; names are matched without regard to case (a plain ``dict`` works, as do
            the header objects of Litestar, Starlette, Flask and Django).
        secret: The tenant's signing secret (``whsec_...``), or several: during a rotation, keep the old one
            beside the new for its 24 h and pass both.
        tolerance_s: How far the ``webhook-timestamp`` may be from this machine's clock, past or future.

    Returns:
        The verified Event.

    Raises:
        WebhookVerificationError: A header is missing, the timestamp is stale or ahead, no signature matches with
            any secret (or more than :data:`MAX_SIGNATURES` are offered), a secret is not a ``whsec_`` and base64
            string, the body is not bytes, or it is not an Event. The message never holds a secret.
        ValueError: ``tolerance_s`` is not a finite number >= 0 (NaN or infinity would let a webhook of any age
            through): a mistake in the receiver's code, told at once.
    """
    if isinstance(tolerance_s, bool) or not isinstance(tolerance_s, int | float):
        raise TypeError("tolerance_s must be a number of seconds")
    if not math.isfinite(tolerance_s) or tolerance_s < 0:
        raise ValueError(f"tolerance_s must be a finite number >= 0, not {tolerance_s!r}")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise WebhookVerificationError(
            f"the body must be the raw request body as bytes, exactly as received, not {type(body).__name__}"
        )
    secrets = _secrets(secret)
    msg_id, timestamp, signatures = _headers(headers)
    timestamp = timestamp.strip()
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError("webhook-timestamp is not a whole number of unix seconds")
    sent_at = int(timestamp)
    skew_s = time.time() - sent_at
    if skew_s > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {skew_s:.0f} s old, more than {tolerance_s:g} s")
    if -skew_s > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {-skew_s:.0f} s ahead, more than {tolerance_s:g} s")
    parts = signatures.split()
    if len(parts) > MAX_SIGNATURES:
        raise WebhookVerificationError(f"webhook-signature carries {len(parts)} signatures, more than {MAX_SIGNATURES}")
    offered = [part.split(",", 1)[1] for part in parts if part.startswith("v1,")]
    if not offered:
        raise WebhookVerificationError("webhook-signature has no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + bytes(body)
    expected = [base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode() for s in secrets]
    # Every pair is compared in constant time, and all of them, so the time taken says nothing about which matched.
    matched = False
    for candidate in offered:
        for wanted in expected:
            matched |= hmac.compare_digest(candidate.encode(), wanted.encode())
    if not matched:
        raise WebhookVerificationError("no signature matches the body with the secret(s) given")
    try:
        return _event.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WebhookVerificationError(f"the signed body is not an Event: {exc}") from None


def _secrets(secret: object) -> list[str]:
    """The secret(s) given, each a str (a bytes secret, or None, is a mistake the message names without it)."""
    secrets = [secret] if isinstance(secret, str) or not isinstance(secret, Sequence) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no secret to verify with")
    for one in secrets:
        if not isinstance(one, str):
            raise WebhookVerificationError(
                f"a secret is a str, whsec_ and base64 (GET /v1/signing-secret gives it), not {type(one).__name__}"
            )
    return secrets  # type: ignore[return-value]  # each checked above


def _headers(headers: object) -> tuple[str, str, str]:
    """webhook-id, webhook-timestamp and webhook-signature, their names matched without regard to case."""
    items = getattr(headers, "items", None)
    if not callable(items):
        raise WebhookVerificationError("no headers: pass the request's headers")
    found: dict[str, str] = {}
    for name, value in items():
        if not isinstance(name, str | bytes):
            continue
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        found[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    msg_id = found.get("webhook-id")
    timestamp = found.get("webhook-timestamp")
    signatures = found.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    return msg_id, timestamp, signatures


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    encoded += "=" * (-len(encoded) % 4)  # unpadded secrets are accepted, as by the reference libraries
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("a secret is not valid base64 (expected whsec_ and base64)") from None
    if not key:
        raise WebhookVerificationError("a secret is empty")
    return key
