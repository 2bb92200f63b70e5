"""A task submitted over HTTP runs on a worker and its result reaches a real receiver, signed."""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook

from tests.integration.conftest import Relay
from tests.support import Receiver


def test_echo_result_arrives_signed_per_standard_webhooks(relay: Relay, receiver: Receiver) -> None:
    task = relay.client.submit("echo", {"hello": "world"}, webhook=receiver.url("/hook"))
    assert task["status"] == "queued"
    assert task["id"].startswith("task_")

    (hook,) = receiver.wait_for("/hook")
    secret = relay.client.get("/v1/signing-secret").json()["secret"]
    payload = Webhook(secret).verify(hook.body, hook.headers)

    assert payload["type"] == "task.completed"
    assert payload["task_id"] == task["id"]
    assert payload["seq"] == 1
    assert payload["data"] == {"status": "succeeded", "result": {"hello": "world"}}
    assert hook.headers["webhook-id"] == payload["id"]
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.headers["User-Agent"].startswith("relay/")
