"""@relay/client in Chromium, as a page imports it with no build step: the files of clients/js/src served as they
are (from the API's origin, so that no CORS is involved), a task submitted, streamed and waited for, and a webhook
verified with the browser's Web Crypto."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

from delivery.signing import generate_secret, signature_header
from tests.support import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

SRC = ROOT / "clients" / "js" / "src"
PACKAGE_PATH = "/_package/"

USE_THE_CLIENT = """async ([key, webhook]) => {
  const { Relay, verifyWebhook, WebhookVerificationError } = await import("/_package/index.js");
  const relay = new Relay(location.origin, key);
  const task = await relay.tasks.submit("sleep", { seconds: 1 });
  const seqs = [];
  for await (const event of task.stream()) seqs.push(event.seq);
  const ended = await task.wait({ timeout: 20 });
  const event = await verifyWebhook(webhook.body, new Headers(webhook.headers), webhook.secret);
  let refused = null;
  try {
    await verifyWebhook(webhook.body + " ", new Headers(webhook.headers), webhook.secret);
  } catch (error) {
    refused = error instanceof WebhookVerificationError ? error.name : String(error);
  }
  return { seqs, status: ended.status, result: ended.result, eventId: event.id, refused };
}"""


def test_the_client_runs_in_a_browser_as_its_files_are(relay: Relay, page: Page) -> None:
    def serve_source(route: Route) -> None:
        name = route.request.url.split(PACKAGE_PATH, 1)[1]
        path = SRC / name
        if "/" in name or not path.is_file():
            route.fulfill(status=404)
            return
        route.fulfill(status=200, body=path.read_bytes(), headers={"content-type": "text/javascript"})

    page.route(f"**{PACKAGE_PATH}*", serve_source)
    page.goto(relay.api.url + "/")

    secret = generate_secret()
    body = json.dumps({"id": "evt_browser", "type": "task.completed", "task_id": "task_x", "seq": 1}).encode()
    timestamp = int(time.time())
    headers = {
        "webhook-id": "evt_browser",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([secret], "evt_browser", timestamp, body),
    }
    webhook = {"body": body.decode(), "headers": headers, "secret": secret}

    outcome = page.evaluate(USE_THE_CLIENT, ["key-acme", webhook])

    assert outcome["status"] == "succeeded"
    assert outcome["result"] == {"slept": 1}
    assert outcome["seqs"] == list(range(1, len(outcome["seqs"]) + 1))
    assert outcome["eventId"] == "evt_browser"
    assert outcome["refused"] == "WebhookVerificationError"
