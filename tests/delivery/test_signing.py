"""Relay's webhook signatures verify with the Standard Webhooks reference library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery.signing import generate_secret, secret_bytes, sign, signature_header, webhook_headers

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"task_id":"t_1","status":"succeeded","result":{"n":42}}'
USER_AGENT = "Relay/0.1"


def test_sign_reproduces_the_specification_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_headers_verify_with_the_reference_library() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()), BODY, user_agent=USER_AGENT)
    assert Webhook(secret).verify(BODY, headers) == {"task_id": "t_1", "status": "succeeded", "result": {"n": 42}}


def test_headers_carry_every_standard_field() -> None:
    headers = webhook_headers([VECTOR_SECRET], VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY, user_agent=USER_AGENT)
    assert headers == {
        "content-type": "application/json",
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
        "user-agent": USER_AGENT,
    }


@pytest.mark.parametrize("receiver_holds", [pytest.param(0, id="old-secret"), pytest.param(1, id="new-secret")])
def test_during_rotation_either_secret_alone_verifies(receiver_holds: int) -> None:
    live = [generate_secret(), generate_secret()]
    headers = webhook_headers(live, "msg_rotating", int(time.time()), BODY, user_agent=USER_AGENT)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(live[receiver_holds]).verify(BODY, headers)


def test_signature_header_lists_one_signature_per_secret_in_order() -> None:
    other = generate_secret()
    header = signature_header([VECTOR_SECRET, other], VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert header == f"{VECTOR_SIGNATURE} {sign(other, VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY)}"


def test_signature_header_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        signature_header([], "msg_1", 1, BODY)


def test_tampered_body_fails_verification() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()), BODY, user_agent=USER_AGENT)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"42", b"43"), headers)


def test_wrong_secret_fails_verification() -> None:
    headers = webhook_headers([generate_secret()], "msg_1", int(time.time()), BODY, user_agent=USER_AGENT)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_changed_message_id_fails_verification() -> None:
    secret = generate_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()), BODY, user_agent=USER_AGENT)
    headers["webhook-id"] = "msg_2"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)


def test_generated_secret_round_trips_and_is_accepted_by_the_reference_library() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    key = secret_bytes(secret)
    assert len(key) == 32
    assert base64.b64encode(key).decode() == secret.removeprefix("whsec_")
    assert Webhook(secret)._whsecret == key


def test_secret_prefix_is_optional() -> None:
    assert secret_bytes(VECTOR_SECRET.removeprefix("whsec_")) == secret_bytes(VECTOR_SECRET)


def test_unpadded_secret_signs_like_the_reference_library() -> None:
    unpadded = "whsec_" + base64.b64encode(b"twenty-five bytes of key!").decode().rstrip("=")
    signed_at = datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=UTC)
    reference = Webhook(unpadded).sign(VECTOR_MSG_ID, signed_at, VECTOR_BODY.decode())
    assert sign(unpadded, VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == reference


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("whsec_not base64!", id="not-base64"),
        pytest.param("whsec_", id="empty"),
        pytest.param("whsec_A", id="truncated"),
    ],
)
def test_bad_secret_is_a_value_error_that_does_not_quote_it(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as failed:
        secret_bytes(secret)
    assert str(failed.value) in {"webhook secret is not valid base64", "webhook secret is empty"}
    # Nothing chained either: a traceback must not show the decoder's error, which can quote its input.
    assert failed.value.__cause__ is None
    assert failed.value.__context__ is None or failed.value.__suppress_context__
