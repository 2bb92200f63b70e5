"""The console's destinations view in a real Chromium for an open destination with nothing owed: what it says it
waits for, before its probe's wait ends and after (as `relay destinations show` says it)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import pytest

from tests.browser.playwright_guard import expect
from tests.integration.conftest import relay_for_many_tests
from tests.integration.test_destinations import destination_of
from tests.support import run_receiver, wait_dead_letter

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.conftest import RedisServer
    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

# One failure opens a circuit and its probe waits 6 s; a webhook's retry span is half a second, so the refused one is
# a dead letter (and nothing is owed) well before the probe's wait ends.
PROBE_S = 6
OPENS_AT_ONCE = {"RELAY_BREAKER_THRESHOLD": "1", "RELAY_BREAKER_PROBE_S": str(PROBE_S), "RELAY_RETRY_SCHEDULE": "0.5"}


@pytest.fixture(scope="module")
def shared_relay(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, **OPENS_AT_ONCE) as running:
        yield running


def test_an_open_destination_with_nothing_owed_says_it_waits_for_a_webhook_once_its_probe_is_due(
    relay: Relay, page: Page
) -> None:
    with run_receiver() as receiver:
        url = receiver.script("/down", 500)
        first = relay.client.submit("echo", "first", webhook=url)
        wait_dead_letter(relay.client, first["id"])
        origin = url.rsplit("/", 1)[0]
        dst = destination_of(relay.client, origin)
        assert (dst["state"], dst["owed"], dst["in_flight"]) == ("open", 0, 0)
        due = datetime.fromisoformat(dst["next_probe_at"])
        at = due.strftime("%H:%M:%SZ")

        page.goto(relay.api.url + "/console#token=admin-token")
        page.click("#tabs button[data-view='destinations']")
        row = page.locator("#dst-rows tr", has_text=origin)
        expect(row.locator(".badge")).to_have_text("open")
        error = row.locator("td:nth-child(7)")
        shown_at = time.time()
        if shown_at < due.timestamp() - 0.5:  # shown while the wait runs (as it is unless the machine stalled)
            expect(error).to_contain_text(f"next probe {at}, with the next webhook owed (none is owed now)")

        # The wait over, the same row (not loaded again) says what it waits for, and no time that has passed.
        expect(error).to_contain_text(
            f"waiting for a webhook to probe with (its wait ended at {at}; the next one owed probes at once)",
            timeout=(due.timestamp() - time.time() + 10) * 1000,
        )
        assert time.time() >= due.timestamp()
        expect(error).not_to_contain_text(re.compile(r"next probe \d"))

        # Loaded again now: the same words at once.
        page.click("#dst-filter button[type=submit]")
        expect(error).to_contain_text("waiting for a webhook to probe with", timeout=5_000)
        assert len(receiver.on("/down")) == 1  # nothing was sent to probe with
