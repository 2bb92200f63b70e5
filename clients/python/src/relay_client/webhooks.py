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
import time
from collections.abc import Mapping, Sequence

import msgspec

from relay_client.errors import WebhookVerificationError
from relay_client.types import Event

__all__ = ["DEFAULT_TOLERANCE_S", "verify_webhook"]

# A webhook whose timestamp is further than this from the receiver's clock, either way, is refused (a replay of
# an old request, or a clock badly off).
DEFAULT_TOLERANCE_S = 300
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
            any secret, a secret is not ``whsec_`` and base64, or the body is not an Event. The message never holds
            a secret.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no secret to verify with")
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a whole number of seconds") from None
    skew_s = time.time() - sent_at
    if skew_s > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {skew_s:.0f} s old, more than {tolerance_s:g} s")
    if -skew_s > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {-skew_s:.0f} s ahead, more than {tolerance_s:g} s")
    offered = [part.split(",", 1)[1] for part in signatures.split() if part.startswith("v1,")]
    if not offered:
        raise WebhookVerificationError("webhook-signature has no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + body
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
