"""The operator console's overview at ``/console`` in a real Chromium: it moves while tasks run, asks again for a
token it was refused, and shows a tenant's key that tenant's own figures. Screenshots of each view are saved under
the path the first test prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import CI

try:
    from playwright.sync_api import expect
except ImportError as exc:  # a dev extra: missing only where setup did not run
    if CI:
        raise
    pytest.skip(f"playwright is not installed ({exc})", allow_module_level=True)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

PHONE = {"width": 390, "height": 844}
NO_FIGURE = "\u2013"  # what a figure shows before there is one (an en dash)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console-screenshots")
    print(f"console screenshots: {path}")
    return path


def test_the_overview_moves_while_tasks_run(relay: Relay, page: Page, browser: Browser, shots: Path) -> None:
    page.goto(relay.api.url + "/console#token=admin-token")

    expect(page.locator("#scope")).to_have_text("every tenant")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    assert "token" not in page.url  # the fragment is gone from the address (and its history)
    before = page.evaluate("window.consoleState.last.tasks.submitted")
    tasks = [relay.client.submit("echo", {"n": n}) for n in range(120)]
    for task in tasks:
        relay.client.wait_task(task["id"])

    page.wait_for_function(
        "(n) => (window.consoleState.last?.tasks.submitted ?? 0) >= n", arg=before + 120, timeout=10_000
    )
    # Rates need figures a few seconds old: they come, and show the load.
    page.wait_for_function("() => (window.consoleState.last?.rates?.tasks_submitted ?? 0) > 0", timeout=15_000)
    expect(page.locator("#v-submitted")).not_to_have_text(NO_FIGURE)
    expect(page.locator("#v-ended")).not_to_have_text(NO_FIGURE)
    assert float(page.inner_text("#v-submitted").replace(",", "")) > 0
    points = page.get_attribute("#s-submitted", "points") or ""
    heights = {p.split(",")[1] for p in points.split()}
    assert len(heights) > 1  # the chart is not flat
    expect(page.locator("#tasks li[data-key='submitted'] .count")).not_to_have_text("0")
    page.screenshot(path=str(shots / "overview-desktop.png"), full_page=True)

    phone = browser.new_context(viewport=PHONE).new_page()
    try:
        phone.goto(relay.api.url + "/console#token=admin-token")
        expect(phone.locator("#live")).to_have_attribute("data-state", "live")
        phone.wait_for_timeout(1500)
        phone.screenshot(path=str(shots / "overview-phone.png"), full_page=True)
    finally:
        phone.context.close()


def test_a_refused_token_asks_again_with_why_and_a_good_one_opens_the_console(
    relay: Relay, page: Page, shots: Path
) -> None:
    page.goto(relay.api.url + "/console#token=not-a-token")

    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#token-error")).to_contain_text("That token was refused: unknown API key or admin token")
    assert page.evaluate("sessionStorage.getItem('relay:console:token')") is None
    page.screenshot(path=str(shots / "sign-in-refused.png"))

    page.fill("#token", "admin-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#scope")).to_have_text("every tenant")
    page.reload()  # the token is kept for the tab
    expect(page.locator("#scope")).to_have_text("every tenant")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()


def test_a_tenants_key_shows_that_tenants_figures_only(relay: Relay, page: Page) -> None:
    relay.client.submit("echo", "globex's", key="key-globex")
    page.goto(relay.api.url + "/console#token=key-acme")

    expect(page.locator("#scope")).to_have_text("tenant acme")
    acme = relay.client.get("/v1/stats", key="key-acme").json()
    page.wait_for_function("() => window.consoleState.last !== null")
    shown = page.evaluate("window.consoleState.last")
    assert shown["tenant"] == "acme"
    assert shown["tasks"]["submitted"] == acme["tasks"]["submitted"]
    assert shown["queue_depth"] is None  # the broker's queue is everyone's
    expect(page.locator("#v-queue")).to_contain_text(NO_FIGURE)
