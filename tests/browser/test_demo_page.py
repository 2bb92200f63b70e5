"""The demo page at ``/`` in a real Chromium: a task followed live keeps every event, once and in order, across
an API killed and restarted, a cut connection, a page reload and a socket gone silent."""

from __future__ import annotations

import os
import re
import signal
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.playwright_guard import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

FINISH_TIMEOUT_MS = 30_000
TASK_ID = re.compile(r"^task_\S+$")


def submit_sleep(page: Page, seconds: float) -> str:
    expect(page.locator('input[name="kind"][value="sleep"]')).to_be_checked()
    page.fill("#seconds", str(seconds))
    page.click("#run")
    expect(page.locator("#task-id")).to_have_text(TASK_ID, timeout=10_000)
    return page.inner_text("#task-id")


def wait_for_progress(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => window.relayEvents.filter(e => e.type === 'task.progress').length >= n", arg=count, timeout=10_000
    )


def received(page: Page, task_id: str) -> list[dict[str, Any]]:
    return [e for e in page.evaluate("window.relayEvents") if e["taskId"] == task_id]


def statuses(page: Page, kind: str) -> list[dict[str, Any]]:
    return [s for s in page.evaluate("window.relayStatuses") if s["type"] == kind]


def server_event_ids(relay: Relay, task_id: str) -> list[str]:
    response = relay.client.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()["events"]]


def logged_seqs(page: Page) -> list[int]:
    """The seq column of the page's event log (connection notes left out)."""
    return [int(text.lstrip("#")) for text in page.locator("#log tr.event td.seq").all_inner_texts()]


def assert_complete(page: Page, relay: Relay, task_id: str, events: list[dict[str, Any]]) -> None:
    """The page got the task's whole log: seq 1..N once each, in order, the same events the server kept."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert events[-1]["type"] == "task.completed"
    assert [e["id"] for e in events] == server_event_ids(relay, task_id)
    assert logged_seqs(page) == seqs
    expect(page.locator("#stat-order")).to_have_attribute("data-ok", "true")
    expect(page.locator("#percent")).to_have_text("100%")


def test_a_task_followed_through_an_api_kill_arrives_whole_and_in_order(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/")
    page.fill("#api-key", "key-acme")
    task_id = submit_sleep(page, 6)
    wait_for_progress(page, 2)
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")

    relay.api.kill()  # SIGKILL: the socket dies with no close frame
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "open", timeout=5_000)
    relay.api.start()  # the same port

    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    events = received(page, task_id)
    assert_complete(page, relay, task_id, events)
    assert len(events) >= 7  # progress at 0 % and about once a second, then completed
    assert statuses(page, "reconnecting"), "the client never reconnected"
    resumed = [s for s in statuses(page, "subscribed") if s["afterSeq"] > 0]
    assert resumed, "the client did not resume from its last seq"
    assert all(s["recovered"] for s in statuses(page, "subscribed"))
    expect(page.locator("#log tr.note-resumed")).not_to_have_count(0)


def test_cut_the_connection_resumes_without_gaps(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=key-acme")  # the link `relay serve` prints
    expect(page.locator("#api-key")).to_have_value("key-acme")
    assert "key-acme" not in page.url  # the key does not stay in the address bar
    task_id = submit_sleep(page, 4)
    wait_for_progress(page, 2)

    page.click("#cut")

    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    assert_complete(page, relay, task_id, received(page, task_id))
    assert [s["code"] for s in statuses(page, "closed")] == [4000]
    assert len(statuses(page, "open")) == 2
    expect(page.locator("#stat-reconnects")).to_have_text("1")


def test_on_a_phone_the_log_shows_each_events_data_and_an_ended_task_has_nothing_to_cut(
    relay: Relay, page: Page
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(relay.api.url + "/#key=key-acme")
    submit_sleep(page, 1)
    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)

    # The log fits its box: no sideways scroll hides the data column, and each event's data is on screen.
    wrap = page.evaluate(
        "(() => { const w = document.getElementById('log-wrap'); return [w.scrollWidth, w.clientWidth]; })()"
    )
    assert wrap[0] <= wrap[1] + 1, wrap
    width = page.evaluate("document.documentElement.clientWidth")
    for box in page.locator("#log tr.event td.data").evaluate_all(
        "cells => cells.map(c => c.getBoundingClientRect().right)"
    ):
        assert box <= width + 1, (box, width)
    expect(page.locator("#cut")).to_be_disabled()


def test_a_reload_resumes_after_the_last_seq_the_tab_saw(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=key-acme")
    task_id = submit_sleep(page, 4)
    wait_for_progress(page, 2)

    page.reload()

    expect(page.locator("#task-id")).to_have_text(task_id)
    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    live = received(page, task_id)
    earlier = page.locator("#log tr.event.earlier").count()
    assert earlier >= 2  # shown from GET /v1/tasks/{id}/events with the task's ws_token
    assert [e["seq"] for e in live] == list(range(earlier + 1, earlier + 1 + len(live)))  # not replayed from 1
    assert logged_seqs(page) == list(range(1, earlier + len(live) + 1))
    assert [e["id"] for e in live] == server_event_ids(relay, task_id)[earlier:]


def test_a_failing_task_shows_its_error(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=key-acme")
    page.click('label:has(input[value="fail"])')
    page.fill("#fail-message", "the printer is on fire")
    page.click("#run")

    expect(page.locator("#task-status")).to_have_text("failed", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("#outcome")).to_contain_text("the printer is on fire")
    events = page.evaluate("window.relayEvents")
    assert [e["type"] for e in events][-1] == "task.failed"


def test_a_long_sleep_is_cancelled_from_the_page(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=key-acme")
    task_id = submit_sleep(page, 60)
    wait_for_progress(page, 2)

    page.click("#cancel")

    expect(page.locator("#task-status")).to_have_text("cancelled", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("#outcome")).to_contain_text("cancelled")
    expect(page.locator("#cancel")).to_be_disabled()
    assert [e["type"] for e in received(page, task_id)][-1] == "task.cancelled"
    assert relay.client.task(task_id)["status"] == "cancelled"


def test_an_unknown_key_is_said_plainly_and_not_offered_again(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/")
    page.fill("#api-key", "not-a-key")
    page.click("#run")
    expect(page.locator("#form-error")).to_have_text("Relay does not know that API key.")
    assert page.evaluate("localStorage.getItem('relay-demo:key')") is None
    page.reload()
    expect(page.locator("#api-key")).to_have_value("")


def test_a_key_link_opened_in_the_tab_already_on_the_page_replaces_the_key(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=a-key-from-before-a-restart")
    expect(page.locator("#api-key")).to_have_value("a-key-from-before-a-restart")
    page.click("#run")
    expect(page.locator("#form-error")).to_have_text("Relay does not know that API key.")

    page.goto(relay.api.url + "/#key=key-acme")  # the banner's link, in the same tab: only the fragment changes

    expect(page.locator("#api-key")).to_have_value("key-acme")
    expect(page.locator("#form-error")).to_be_hidden()
    assert "key-acme" not in page.url
    assert page.evaluate("localStorage.getItem('relay-demo:key')") == "key-acme"
    submit_sleep(page, 0.5)
    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)


def test_the_kind_picker_lists_the_kinds_added_to_relay_and_runs_one(relay: Relay, page: Page) -> None:
    page.goto(relay.api.url + "/#key=key-acme")
    added = page.locator('input[name="kind"][value="count_sync"]')
    expect(added).to_have_count(1)  # a kind of RELAY_TASK_MODULES, beside the built-in ones
    expect(page.locator('input[name="kind"][value="sleep"]')).to_have_count(1)

    page.click('label:has(input[value="count_sync"])')
    expect(page.locator("#echo-input")).to_be_visible()  # its input is JSON
    expect(page.locator("#seconds")).to_be_hidden()
    page.fill("#echo-input", '{"steps": 3}')
    page.click("#run")

    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("#outcome")).to_contain_text('"total": 6')


# A client of its own, in the demo page's origin, told the server's ping settings (tests/browser/conftest.py).
START_PROBE = """async ([taskId, token]) => {
  const { RelayClient } = await import("/static/relay.js");
  window.probe = { seqs: [], types: [], statuses: [] };
  const client = new RelayClient(location.origin, {
    pingIntervalMs: 1000,
    pingTimeoutMs: 3000,
    onStatus: (status) => window.probe.statuses.push(status),
  });
  client.subscribe(taskId, token, {
    onEvent: (event) => { window.probe.seqs.push(event.seq); window.probe.types.push(event.type); },
  });
}"""


def test_a_silent_socket_counts_as_dead_and_the_client_resumes(relay: Relay, page: Page) -> None:
    task = relay.client.submit("sleep", {"seconds": 5}, body={"websocket": True})
    page.goto(relay.api.url + "/")
    page.evaluate(START_PROBE, [task["id"], task["ws_token"]])
    page.wait_for_function("() => window.probe.seqs.length >= 2", timeout=10_000)

    # SIGSTOP: the API's sockets stay open but nothing comes, as behind a dead NAT or a hung proxy.
    assert relay.api.process is not None
    os.killpg(relay.api.process.pid, signal.SIGSTOP)
    try:
        page.wait_for_function(
            "() => window.probe.statuses.some(s => s.type === 'closed' && s.code === 4001)", timeout=10_000
        )
    finally:
        os.killpg(relay.api.process.pid, signal.SIGCONT)

    page.wait_for_function("() => window.probe.types.includes('task.completed')", timeout=FINISH_TIMEOUT_MS)
    seqs = page.evaluate("() => window.probe.seqs")
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == len(server_event_ids(relay, task["id"]))
