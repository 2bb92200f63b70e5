"""Every page opened as a first visit would open it (a bookmark, a link from a colleague, the address typed by hand):
empty storage, nothing in the address's fragment. Each must draw what a newcomer starts from, with no script error
and nothing in the browser's console at error level."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.browser.playwright_guard import expect

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

    from tests.integration.conftest import Relay

pytestmark = pytest.mark.slow

# What each page shows a newcomer once its scripts have run.
PAGES = {
    "/console": "#sign-in #token",
    "/": "#run-form #run",
    "/schema/swagger": ".opblock",
    "/schema": ".opblock",
}


def open_fresh(browser: Browser, relay: Relay, path: str, viewport: dict[str, int]) -> tuple[Page, list[str]]:
    """A new tab with its own empty storage, recording every page error and every console message at error level."""
    tab = browser.new_context(viewport=viewport).new_page()  # type: ignore[arg-type]
    trouble: list[str] = []
    tab.on("pageerror", lambda error: trouble.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            trouble.append(f"console error: {message.text} at {message.location}")

    tab.on("console", on_console)
    tab.goto(relay.api.url + path)
    return tab, trouble


@pytest.mark.parametrize(
    "viewport", [{"width": 1366, "height": 800}, {"width": 390, "height": 844}], ids=["desk", "phone"]
)
@pytest.mark.parametrize("path", list(PAGES))
def test_a_first_visit_draws_the_page_with_no_error(
    relay: Relay, browser: Browser, path: str, viewport: dict[str, int]
) -> None:
    tab, trouble = open_fresh(browser, relay, path, viewport)
    try:
        expect(tab.locator(PAGES[path]).first).to_be_visible(timeout=15_000)
        tab.wait_for_load_state("networkidle")
        if path == "/console":
            expect(tab.locator("#token")).to_be_focused()
            expect(tab.locator("#tabs")).to_be_hidden()
        if path == "/":
            expect(tab.locator("#api-key")).to_have_value("")
        assert trouble == []
    finally:
        tab.context.close()


def test_the_console_signs_in_from_its_first_visit_form(relay: Relay, browser: Browser) -> None:
    tab, trouble = open_fresh(browser, relay, "/console", {"width": 1366, "height": 800})
    try:
        tab.fill("#token", "admin-token")
        tab.click("#token-form button[type=submit]")
        expect(tab.locator("#scope")).to_have_text("every tenant")
        expect(tab.locator("#live")).to_have_attribute("data-state", "live")
        for view in ("letters", "destinations", "tasks", "overview"):
            tab.click(f"#tabs button[data-view='{view}']")
        tab.wait_for_load_state("networkidle")
        assert trouble == []
    finally:
        tab.context.close()
