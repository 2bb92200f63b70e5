"""A callback whose name passes the check at submit and resolves to a forbidden address when its webhook is sent (DNS
rebinding), end to end on real processes: the webhook is dead-lettered ``forbidden_address`` at its first attempt
and nothing is sent. The name's answers are faked inside the API and the workers by tests/rebinding_dns.py; the
only address ever connected to is 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.integration.conftest import StartCluster
from tests.rebinding_dns import REBINDING_HOST, SEND_TIME_ANSWER
from tests.support import Receiver, count_outcome, wait_dead_letter, webhook_attempts

pytestmark = pytest.mark.slow


def test_a_name_that_rebinds_to_loopback_after_submit_is_dead_lettered_and_never_sent(
    start_cluster: StartCluster, receiver: Receiver
) -> None:
    relay = start_cluster(RELAY_ALLOW_PRIVATE_CALLBACKS="false", RELAY_TASK_MODULES="tests.rebinding_dns")
    # The guard is on: the receiver's own address is refused at submit.
    refused = relay.client.post("/v1/tasks", json={"kind": "echo", "webhook": {"url": receiver.url("/hook")}})
    assert refused.status_code == 422, refused.text
    # The rebinding name is public at submit, and resolves to the receiver's address (127.0.0.1) at send time.
    url = f"http://{REBINDING_HOST}:{receiver.port}/hook"
    task = relay.client.submit("echo", {"rebound": True}, webhook=url)

    letter = wait_dead_letter(relay.client, task["id"], reason="forbidden_address")

    assert letter["url"] == url
    assert (letter["attempts"], letter["last_status_code"]) == (1, None)  # at once: no retry could make it safe
    assert letter["last_error"] == (
        f"{REBINDING_HOST} resolves to {SEND_TIME_ANSWER[0]}, a private, loopback, link-local or metadata address"
    )
    assert [(a["outcome"], a["status_code"]) for a in webhook_attempts(relay.client, task["id"])] == [("failed", None)]
    assert receiver.received == []  # listening where the name led: nothing came
    # The task itself succeeded and ended once; only its webhook was refused.
    outcome = count_outcome(relay.client, [task["id"]])
    assert (outcome.completed, outcome.not_ended_once) == (1, 0)
