"""Server-Sent Events in a real Chromium: a page's own EventSource with ``?token=`` gets a task's whole log, and the
demo page, where no WebSocket can be opened, falls back to the stream, says so, and keeps every event once, in order."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.playwright_guard import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

FINISH_TIMEOUT_MS = 30_000

# A page's own EventSource, as the contract describes it: named events, ids, closed on the final one.
FOLLOW = """([taskId, token]) => new Promise((resolve, reject) => {
  const got = { events: [], ids: [], names: [], subscribed: null };
  const source = new EventSource(`/v1/tasks/${taskId}/stream?token=${encodeURIComponent(token)}`);
  source.addEventListener("subscribed", (m) => { got.subscribed = JSON.parse(m.data); });
  for (const type of ["task.progress", "task.completed", "task.failed", "task.cancelled"]) {
    source.addEventListener(type, (m) => {
      got.events.push(JSON.parse(m.data));
      got.ids.push(m.lastEventId);
      got.names.push(m.type);
      if (type !== "task.progress") { source.close(); resolve(got); }
    });
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) reject(new Error("stream refused")); };
})"""

# Where WebSockets are blocked: before any script of the page runs, a WebSocket that never opens.
CLOSES_BEFORE_OPEN = """window.WebSocket = class {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) {
    this.url = url; this.readyState = 0;
    setTimeout(() => { this.readyState = 3; if (this.onclose) this.onclose({ code: 1006, reason: "" }); }, 20);
  }
  send() { throw new Error("not open"); }
  close() {}
};"""
CONSTRUCTOR_THROWS = """window.WebSocket = class {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) { throw new DOMException("WebSockets are blocked here", "SecurityError"); }
};"""


def server_events(relay: Relay, task_id: str) -> list[dict[str, Any]]:
    response = relay.client.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def test_a_pages_event_source_with_the_token_gets_every_event(relay: Relay, page: Page) -> None:
    task = relay.client.submit("sleep", {"seconds": 2})
    page.goto(relay.api.url + "/")

    got = page.evaluate(FOLLOW, [task["id"], task["ws_token"]])

    events = server_events(relay, task["id"])
    assert got["subscribed"]["type"] == "subscribed"
    assert got["subscribed"]["task_id"] == task["id"]
    assert got["events"] == events
    assert got["ids"] == [str(e["seq"]) for e in events]
    assert got["names"] == [e["type"] for e in events]
    assert got["names"][-1] == "task.completed"


@pytest.mark.parametrize("blocked", [CLOSES_BEFORE_OPEN, CONSTRUCTOR_THROWS], ids=["closes-before-open", "throws"])
def test_the_demo_page_falls_back_to_server_sent_events_when_no_websocket_opens(
    relay: Relay, page: Page, blocked: str
) -> None:
    page.add_init_script(blocked)
    page.goto(relay.api.url + "/#key=key-acme")
    page.fill("#seconds", "3")
    page.click("#run")

    expect(page.locator("#conn-channel")).to_have_text("SSE", timeout=10_000)
    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    task_id = page.inner_text("#task-id")
    events = [e for e in page.evaluate("window.relayEvents") if e["taskId"] == task_id]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["id"] for e in events] == [e["id"] for e in server_events(relay, task_id)]
    statuses = page.evaluate("window.relayStatuses")
    assert [s["channel"] for s in statuses if s["type"] == "fallback"] == ["sse"]
    assert any(s["type"] == "open" and s["channel"] == "sse" for s in statuses)
    assert not any(s["type"] == "open" and s.get("channel") == "websocket" for s in statuses)
    expect(page.locator("#log tr.note-fallback")).to_have_count(1)
    expect(page.locator("#stat-order")).to_have_attribute("data-ok", "true")
    assert page.evaluate(f"sessionStorage.getItem('relay:seq:{task_id}')") == str(seqs[-1])
    # The stream's end with its task is no error: the header says so plainly.
    expect(page.locator("#conn")).to_have_attribute("data-state", "ended")
    expect(page.locator("#conn-text")).to_have_text("the task ended; stream closed")


def test_after_a_fallback_a_reload_resumes_the_stream_after_the_last_seq(relay: Relay, page: Page) -> None:
    page.add_init_script(CLOSES_BEFORE_OPEN)
    page.goto(relay.api.url + "/#key=key-acme")
    page.fill("#seconds", "4")
    page.click("#run")
    page.wait_for_function("() => window.relayEvents.length >= 2", timeout=10_000)

    page.reload()

    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    task_id = page.inner_text("#task-id")
    live = [e["seq"] for e in page.evaluate("window.relayEvents") if e["taskId"] == task_id]
    earlier = page.locator("#log tr.event.earlier").count()
    assert earlier >= 2
    assert live == list(range(earlier + 1, earlier + 1 + len(live)))  # not replayed from 1
    expect(page.locator("#conn-channel")).to_have_text("SSE")


# WebSockets blocked while window.blockWebSockets is true (as behind a proxy that refuses them), the real ones after.
BLOCKED_UNTIL_LIFTED = """(() => {
  const Real = window.WebSocket;
  window.blockWebSockets = true;
  window.WebSocket = class extends Real {
    constructor(url) {
      super(window.blockWebSockets ? url.replace("/v1/ws", "/v1/no-such-socket") : url);
    }
  };
})();"""


def test_after_a_fallback_the_client_goes_back_to_a_websocket_once_one_opens(relay: Relay, page: Page) -> None:
    page.add_init_script(BLOCKED_UNTIL_LIFTED)
    page.goto(relay.api.url + "/#key=key-acme")
    page.fill("#seconds", "8")
    page.click("#run")
    expect(page.locator("#conn-channel")).to_have_text("SSE", timeout=10_000)
    page.wait_for_function("() => window.relayEvents.length >= 2", timeout=10_000)

    page.evaluate("window.blockWebSockets = false")  # the proxy is gone: the next quiet probe opens a socket

    expect(page.locator("#conn-channel")).to_have_text("WebSocket", timeout=15_000)
    expect(page.locator("#task-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    task_id = page.inner_text("#task-id")
    events = [e for e in page.evaluate("window.relayEvents") if e["taskId"] == task_id]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # once each, in order, across the switch
    assert [e["id"] for e in events] == [e["id"] for e in server_events(relay, task_id)]
    statuses = page.evaluate("window.relayStatuses")
    switched = [i for i, s in enumerate(statuses) if s["type"] == "open" and s.get("channel") == "websocket"]
    assert switched, "no WebSocket opened after the fallback"
    fell_back = next(i for i, s in enumerate(statuses) if s["type"] == "fallback")
    assert switched[0] > fell_back
    # The final event came over the socket, which acks it: the server saw an ack.
    attempts = relay.client.get(f"/v1/tasks/{task_id}/deliveries").json()["attempts"]
    assert any(a["channel"] == "websocket" and a["outcome"] == "acked" for a in attempts), attempts


# A client of its own, told the server's ping settings (1 s + 3 s, tests/browser/conftest.py), whose WebSockets never
# open, so that it follows over Server-Sent Events.
START_STREAM_PROBE = """async ([taskId, token]) => {
  const { RelayClient } = await import("/static/relay.js");
  window.probe = { seqs: [], types: [], statuses: [] };
  const client = new RelayClient(location.origin, {
    pingIntervalMs: 1000,
    pingTimeoutMs: 3000,
    probeBaseMs: 600_000,
    onStatus: (status) => window.probe.statuses.push({ ...status, at: Date.now() }),
  });
  window.probe.client = client;
  client.subscribe(taskId, token, {
    onEvent: (event) => { window.probe.seqs.push(event.seq); window.probe.types.push(event.type); },
  });
}"""


def test_a_silent_stream_counts_as_dead_and_the_client_resumes_after_the_last_seq(relay: Relay, page: Page) -> None:
    task = relay.client.submit("sleep", {"seconds": 6})
    page.add_init_script(CLOSES_BEFORE_OPEN)
    page.goto(relay.api.url + "/")
    page.evaluate(START_STREAM_PROBE, [task["id"], task["ws_token"]])
    page.wait_for_function("() => window.probe.seqs.length >= 2", timeout=10_000)
    assert any(s["type"] == "open" and s["channel"] == "sse" for s in page.evaluate("window.probe.statuses"))

    # SIGSTOP: the stream's connection stays open but nothing comes, not even the server's comment lines.
    assert relay.api.process is not None
    os.killpg(relay.api.process.pid, signal.SIGSTOP)
    try:
        page.wait_for_function(
            "() => window.probe.statuses.some(s => s.type === 'closed' && s.channel === 'sse'"
            " && s.text === 'event stream silent for 4000 ms')",
            timeout=10_000,
        )
        # It is opened again even while the API says nothing, not after minutes of a dead connection.
        page.wait_for_function(
            "() => window.probe.statuses.some(s => s.type === 'reconnecting' && s.channel === 'sse'"
            " && s.text.startsWith('no data for 4000 ms'))",
            timeout=10_000,
        )
    finally:
        os.killpg(relay.api.process.pid, signal.SIGCONT)

    page.wait_for_function("() => window.probe.types.includes('task.completed')", timeout=FINISH_TIMEOUT_MS)
    seqs = page.evaluate("() => window.probe.seqs")
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == len(server_events(relay, task["id"]))


def test_a_stream_resumed_after_the_final_event_ends_quietly(relay: Relay, page: Page) -> None:
    task = relay.client.submit("echo", "done already")
    relay.client.wait_task(task["id"])
    last = server_events(relay, task["id"])[-1]["seq"]
    page.add_init_script(CLOSES_BEFORE_OPEN)
    page.goto(relay.api.url + "/")
    page.evaluate(f"sessionStorage.setItem('relay:seq:{task['id']}', '{last}')")  # this tab has seen it all

    page.evaluate(START_STREAM_PROBE, [task["id"], task["ws_token"]])

    page.wait_for_function(
        "() => window.probe.statuses.some(s => s.type === 'closed' && s.text === 'the task ended; stream closed')",
        timeout=10_000,
    )
    # Nothing is left to reopen it: a 204 says there is nothing more.
    assert page.evaluate("window.probe.client.streams.size") == 0
    statuses = page.evaluate("window.probe.statuses")
    opened = [s["type"] for s in statuses if s["type"] in ("connecting", "reconnecting") and s["channel"] == "sse"]
    assert opened == ["connecting"]
    assert page.evaluate("window.probe.seqs") == []
