"""An open destination with real processes: the webhooks it held past their retry span, a replay into it, and what
it shows while nothing is owed to probe with."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.integration.conftest import Relay, StartRelay
from tests.integration.test_destinations import destination_of
from tests.support import RELAY, ROOT, Api, Receiver, dead_letters, relay_env, wait_dead_letter, wait_until

# One failure opens a circuit; its first probe waits 6 s; a webhook's whole retry span is half a second, so what
# the circuit holds dead-letters long before the probe.
pytestmark = pytest.mark.slow  # a Relay of its own per test, and waits of seconds

PROBE_S = 6.0
OPENS_AT_ONCE = {"RELAY_BREAKER_THRESHOLD": "1", "RELAY_BREAKER_PROBE_S": str(PROBE_S), "RELAY_RETRY_SCHEDULE": "0.5"}


@pytest.fixture
def relay(start_relay: StartRelay) -> Iterator[Relay]:
    api = start_relay("api", wait=False, **OPENS_AT_ONCE)
    worker = start_relay("worker", wait=False, **OPENS_AT_ONCE)
    api.wait_ready()
    worker.wait_ready()
    client = Api(api.url)
    yield Relay(api=api, worker=worker, client=client)
    client.close()


def _opened(relay: Relay, receiver: Receiver, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A destination opened by one webhook its receiver refused (500): that task and the destination."""
    url = receiver.script(path, 500)
    first = relay.client.submit("echo", "first", webhook=url)
    receiver.wait_for(path, 1)
    dst = wait_until(
        lambda: (d := destination_of(relay.client, receiver.url("").rstrip("/")))["state"] == "open" and d,
        message="the destination open",
    )
    return first, dst


def _show(relay: Relay, dst_id: str) -> str:
    shown = subprocess.run(
        [*RELAY, "destinations", "show", dst_id],
        env=relay_env("redis://unused", RELAY_URL=relay.api.url, COLUMNS="200"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_held_webhooks_dead_letter_as_never_attempted_then_the_next_one_owed_probes_at_once(
    relay: Relay, receiver: Receiver
) -> None:
    first, dst = _opened(relay, receiver, "/down")
    held = relay.client.submit("echo", "held", webhook=receiver.url("/down"))
    tried = wait_dead_letter(relay.client, first["id"])
    never = wait_dead_letter(relay.client, held["id"])
    assert (tried["attempts"], tried["last_status_code"], tried["last_error"]) == (1, 500, "HTTP 500")
    assert (never["attempts"], never["last_status_code"]) == (0, None)
    assert never["last_error"] == "circuit open, never attempted"
    assert len(receiver.on("/down")) == 1  # the held one was never sent
    log = relay.worker.output()
    assert (
        f"event {tried['event']['id']} of task {first['id']} is a dead letter (retries_exhausted, 1 attempt): HTTP 500"
    ) in log
    assert (
        f"event {never['event']['id']} of task {held['id']} is a dead letter "
        "(retries_exhausted, 0 attempts): circuit open, never attempted"
    ) in log
    assert ": None" not in log

    # Nothing owed now, and the probe's wait over: the destination says what it waits for.
    dst = relay.client.get(f"/v1/destinations/{dst['id']}", key="admin-token").json()
    assert (dst["state"], dst["owed"]) == ("open", 0)
    wait_until(
        lambda: time.time() > datetime.fromisoformat(dst["next_probe_at"]).timestamp() + 0.5,
        message="the probe's wait over",
    )
    assert "waiting for a webhook to probe with" in _show(relay, dst["id"])
    # The next webhook owed is the probe, at once; the receiver is back, so it closes the circuit.
    receiver.script("/down", 200)
    sent_at = time.time()
    relay.client.submit("echo", "next", webhook=receiver.url("/down"))
    (_, probe) = receiver.wait_for("/down", 2)
    # A poll of the schedule (0.25 s) and the task's run, not a wait of its own (PROBE_S), with seconds to spare.
    assert probe.at - sent_at < PROBE_S / 2
    wait_until(
        lambda: relay.client.get(f"/v1/destinations/{dst['id']}", key="admin-token").json()["state"] == "healthy",
        message="the destination healthy again",
    )


def test_a_replay_into_an_open_destination_gets_a_real_attempt_before_its_span_ends(
    relay: Relay, receiver: Receiver
) -> None:
    first, dst = _opened(relay, receiver, "/back-soon")
    letter = wait_dead_letter(relay.client, first["id"])
    receiver.script("/back-soon", 200)
    # Replayed at once: its half-second span ends long before the probe (PROBE_S after the circuit opened).
    replayed = relay.client.post(f"/v1/dead-letters/{letter['id']}/replay", key="admin-token")
    assert replayed.status_code == 202, replayed.text
    (_, again) = receiver.wait_for("/back-soon", 2, timeout_s=15)  # sent as the probe
    assert again.headers["webhook-id"] == letter["event"]["id"]
    assert again.at < datetime.fromisoformat(dst["next_probe_at"]).timestamp() + 2.0
    wait_until(lambda: dead_letters(relay.client, task_id=first["id"]) == [], message="the dead letter gone")
    assert relay.client.get(f"/v1/destinations/{dst['id']}", key="admin-token").json()["state"] == "healthy"
