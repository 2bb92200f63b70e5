"""verify_webhook against the Standard Webhooks reference library (standardwebhooks): what it signs, we accept;
what it refuses, we refuse. The real webhooks of a real Relay are verified in test_client.py."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from relay_client import EventType, WebhookVerificationError, verify_webhook
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceError

from delivery.signing import generate_secret, signature_header

BODY = (
    b'{"id":"evt_1","type":"task.completed","task_id":"task_1","seq":2,'
    b'"created_at":"2026-12-07T12:00:00Z","data":{"status":"succeeded","result":42}}'
)


def signed(secrets: list[str], *, at: float | None = None, msg_id: str = "evt_1") -> dict[str, str]:
    """Headers as Relay sends them (its own signing code), one signature per secret."""
    timestamp = int(time.time() if at is None else at)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, BODY),
    }


def test_a_webhook_the_reference_library_signs_verifies_and_its_event_is_returned() -> None:
    secret = generate_secret()
    now = datetime.now(UTC)
    signature = Webhook(secret).sign("evt_1", now, BODY.decode())
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}

    event = verify_webhook(BODY, headers, secret)

    assert (event.id, event.type, event.seq, event.data["result"]) == ("evt_1", EventType.COMPLETED, 2, 42)
    Webhook(secret).verify(BODY, headers)  # and the reference library accepts what Relay's code signed the same way


def test_headers_are_matched_without_regard_to_case_and_secrets_without_their_prefix() -> None:
    secret = generate_secret()
    headers = {name.title(): value for name, value in signed([secret]).items()}
    assert verify_webhook(BODY, headers, secret.removeprefix("whsec_")).id == "evt_1"
    unpadded = secret.rstrip("=")
    assert verify_webhook(BODY, headers, unpadded).id == "evt_1"


def test_during_a_rotation_either_secret_verifies_and_a_third_does_not() -> None:
    old, new, other = generate_secret(), generate_secret(), generate_secret()
    headers = signed([new, old])
    for secrets in (old, new, [other, old], (new,)):
        assert verify_webhook(BODY, headers, secrets).id == "evt_1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, headers, other)
    with pytest.raises(ReferenceError):
        Webhook(other).verify(BODY, headers)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h, b: (h, b.replace(b"42", b"43")), "no signature matches"),
        (lambda h, b: ({**h, "webhook-id": "evt_2"}, b), "no signature matches"),
        (lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 1)}, b), "no signature matches"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}, b), "no v1 signature"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "whole number"),
    ],
    ids=["body", "id", "timestamp", "no-signature", "other-scheme", "bad-timestamp"],
)
def test_a_changed_webhook_is_refused_as_the_reference_library_refuses_it(
    change: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]], reason: str
) -> None:
    secret = generate_secret()
    headers, body = change(signed([secret]), BODY)
    with pytest.raises(WebhookVerificationError, match=reason):
        verify_webhook(body, headers, secret)
    with pytest.raises(ReferenceError):
        Webhook(secret).verify(body, headers)


@pytest.mark.parametrize(("offset_s", "word"), [(-301, "old"), (301, "ahead")])
def test_a_stale_or_future_timestamp_is_refused(offset_s: int, word: str) -> None:
    secret = generate_secret()
    headers = signed([secret], at=time.time() + offset_s)
    with pytest.raises(WebhookVerificationError, match=word):
        verify_webhook(BODY, headers, secret)
    with pytest.raises(ReferenceError):
        Webhook(secret).verify(BODY, headers)
    assert verify_webhook(BODY, headers, secret, tolerance_s=400).id == "evt_1"


def test_a_secret_that_is_not_base64_is_named_but_never_shown() -> None:
    headers = signed([generate_secret()])
    bad = "whsec_not*base64*at*all"
    with pytest.raises(WebhookVerificationError, match="not valid base64") as raised:
        verify_webhook(BODY, headers, bad)
    assert "not*base64" not in str(raised.value)
    with pytest.raises(WebhookVerificationError, match="no secret"):
        verify_webhook(BODY, headers, [])


def test_a_signed_body_that_is_not_an_event_is_refused() -> None:
    secret = base64.b64encode(b"k" * 32).decode()
    timestamp = int(time.time())
    body = b'{"hello": "world"}'
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([secret], "evt_1", timestamp, body),
    }
    with pytest.raises(WebhookVerificationError, match="not an Event"):
        verify_webhook(body, headers, secret)


def _hostile(case: str, secret: str) -> tuple[object, object, object]:
    """The body, headers and secret of one hostile call: each was a raw TypeError, AttributeError or OverflowError
    (a 500 in a receiver) before it was refused as a webhook that does not verify."""
    good = signed([secret])
    return {
        "400-digit timestamp": (BODY, {**good, "webhook-timestamp": "9" * 400}, secret),
        "negative timestamp": (BODY, {**good, "webhook-timestamp": "-5"}, secret),
        "str body": (BODY.decode(), good, secret),
        "no body": (None, good, secret),
        "headers None": (BODY, None, secret),
        "secret None": (BODY, good, None),
        "bytes secret": (BODY, good, secret.encode()),
        "a list holding None": (BODY, good, [secret, None]),
        "no secret": (BODY, good, []),
        "17 signatures": (BODY, {**good, "webhook-signature": " ".join([good["webhook-signature"]] * 17)}, secret),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "400-digit timestamp",
        "negative timestamp",
        "str body",
        "no body",
        "headers None",
        "secret None",
        "bytes secret",
        "a list holding None",
        "no secret",
        "17 signatures",
    ],
)
def test_hostile_or_mistaken_arguments_are_a_verification_error_that_never_shows_the_secret(case: str) -> None:
    secret = generate_secret()
    body, headers, given = _hostile(case, secret)

    with pytest.raises(WebhookVerificationError) as raised:
        verify_webhook(body, headers, given)  # type: ignore[arg-type]  # what a receiver's mistake passes

    assert secret not in str(raised.value)
    assert secret.removeprefix("whsec_") not in str(raised.value)


def test_sixteen_signatures_are_still_read_and_the_matching_one_verifies() -> None:
    secret = generate_secret()
    good = signed([secret])
    others = " ".join(signed([generate_secret()])["webhook-signature"] for _ in range(15))

    event = verify_webhook(BODY, {**good, "webhook-signature": f"{others} {good['webhook-signature']}"}, secret)

    assert event.id == "evt_1"


@pytest.mark.parametrize("tolerance_s", [float("nan"), float("inf"), -1])
def test_a_tolerance_that_would_turn_the_age_check_off_is_refused_at_once(tolerance_s: float) -> None:
    secret = generate_secret()
    a_year_old = signed([secret], at=time.time() - 365 * 86400)

    with pytest.raises(ValueError, match="tolerance_s"):
        verify_webhook(BODY, a_year_old, secret, tolerance_s=tolerance_s)


def test_a_tolerance_that_is_not_a_number_is_a_type_error() -> None:
    secret = generate_secret()

    with pytest.raises(TypeError, match="tolerance_s"):
        verify_webhook(BODY, signed([secret]), secret, tolerance_s="300")  # type: ignore[arg-type]
