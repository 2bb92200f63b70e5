"""Webhook retries against a real receiver: the schedule, Retry-After, 410, exhaustion and redirects."""

from __future__ import annotations

from tests.integration.conftest import Relay
from tests.support import Receiver, dead_letters, free_port, wait_dead_letter, wait_until, webhook_attempts


def test_failed_webhook_is_retried_with_the_same_id_and_body_until_it_succeeds(
    relay: Relay, receiver: Receiver
) -> None:
    url = receiver.script("/hook", 500, 500, 200)
    task = relay.client.submit("echo", {"n": 1}, webhook=url)

    hooks = receiver.wait_for("/hook", 3)
    attempts = wait_until(
        lambda: (a := webhook_attempts(relay.client, task["id"])) and len(a) == 3 and a,
        message="three recorded attempts",
    )

    assert len({h.headers["webhook-id"] for h in hooks}) == 1
    assert len({h.body for h in hooks}) == 1
    assert hooks[0].json()["id"] == hooks[0].headers["webhook-id"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert [a["outcome"] for a in attempts] == ["failed", "failed", "delivered"]
    assert {a["event_id"] for a in attempts} == {hooks[0].headers["webhook-id"]}
    assert all(a["duration_ms"] > 0 for a in attempts)
    assert dead_letters(relay.client) == []


def test_retry_after_on_429_and_503_delays_the_next_attempt_beyond_the_schedule(
    relay: Relay, receiver: Receiver
) -> None:
    tasks = {
        status: relay.client.submit(
            "echo", status, webhook=receiver.script(f"/busy-{status}", (status, {"Retry-After": "2"}), 200)
        )
        for status in (429, 503)
    }

    for status, task in tasks.items():
        first, second = receiver.wait_for(f"/busy-{status}", 2, timeout_s=15)
        # The schedule says 0.2 s; the receiver asked for 2 s.
        assert second.at - first.at >= 2.0 - 0.02
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        attempts = wait_until(lambda t=task: (a := webhook_attempts(relay.client, t["id"])) and len(a) == 2 and a)
        assert [(a["status_code"], a["outcome"]) for a in attempts] == [(status, "failed"), (200, "delivered")]


def test_410_dead_letters_without_retry(relay: Relay, receiver: Receiver) -> None:
    url = receiver.script("/gone", 410)
    task = relay.client.submit("echo", "bye", webhook=url)

    dead = wait_dead_letter(relay.client, task["id"])

    # The dead letter is written in the step that records the 410: nothing is owed after it.
    assert [a["outcome"] for a in webhook_attempts(relay.client, task["id"])] == ["failed"]
    assert len(receiver.on("/gone")) == 1
    assert dead["reason"] == "endpoint_gone"
    assert dead["attempts"] == 1
    assert dead["last_status_code"] == 410
    assert dead["url"] == url
    assert dead["tenant"] == "acme"
    assert dead["event"]["id"] == receiver.on("/gone")[0].headers["webhook-id"]
    attempts = webhook_attempts(relay.client, task["id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(410, "failed")]
    metrics = relay.client.get("/metrics", key=None).text
    assert "relay_dead_lettered_total 1.0" in metrics
    assert "relay_dead_letters 1.0" in metrics


def test_a_receiver_that_never_succeeds_ends_as_retries_exhausted(relay: Relay, receiver: Receiver) -> None:
    failing = relay.client.submit("echo", "x", webhook=receiver.script("/down", 500))
    refused_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    refused = relay.client.submit("echo", "y", webhook=refused_url)

    dead = wait_dead_letter(relay.client, failing["id"])
    dead_refused = wait_dead_letter(relay.client, refused["id"])

    schedule = [0.2, 0.4, 0.6]  # RELAY_RETRY_SCHEDULE of the test settings
    assert len(receiver.on("/down")) == 1 + len(schedule)
    assert dead["reason"] == "retries_exhausted"
    assert dead["attempts"] == 1 + len(schedule)
    assert dead["last_status_code"] == 500
    assert "500" in dead["last_error"]
    assert dead["replays"] == 0
    assert dead["first_attempt_at"] <= dead["dead_at"]
    attempts = webhook_attempts(relay.client, failing["id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(500, "failed")] * 4

    # Nothing listening: no status code, but an error that says what happened.
    assert dead_refused["reason"] == "retries_exhausted"
    assert dead_refused["attempts"] == 1 + len(schedule)
    assert dead_refused["last_status_code"] is None
    assert dead_refused["last_error"]
    assert dead_refused["url"] == refused_url
    attempts = webhook_attempts(relay.client, refused["id"])
    assert len(attempts) == 4
    assert all(a["status_code"] is None and a["error"] and a["outcome"] == "failed" for a in attempts)


def test_redirects_are_not_followed(relay: Relay, receiver: Receiver) -> None:
    url = receiver.script("/moved", (302, {"Location": receiver.url("/target")}))
    task = relay.client.submit("echo", "x", webhook=url)

    dead = wait_dead_letter(relay.client, task["id"])

    assert receiver.on("/target") == []
    assert len(receiver.on("/moved")) == 4
    assert dead["reason"] == "retries_exhausted"
    assert dead["last_status_code"] == 302
    attempts = webhook_attempts(relay.client, task["id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [(302, "failed")] * 4
