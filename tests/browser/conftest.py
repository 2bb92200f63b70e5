"""Fixtures for tests that drive a real browser: Debian's Chromium through Playwright (never a downloaded one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.conftest import CI
from tests.integration.conftest import Relay, relay_for_many_tests

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.conftest import RedisServer

CHROMIUM = Path(os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> NoReturn:
    if CI:
        pytest.fail(f"the browser tests need Chromium: {reason}")
    pytest.skip(reason)


# Server pings every second (no pong for 3 s closes), so that a client can be told to count 1 + 3 s of silence as a
# dead socket, and a test can wait for that.
PING_ENV = {"RELAY_WS_PING_INTERVAL": "1", "RELAY_WS_PING_TIMEOUT": "3"}


# The test kinds too, as a user's own kinds (the demo page's picker lists them).
TEST_KINDS = {"RELAY_TASK_MODULES": "tests.kinds_for_tests"}


@pytest.fixture(scope="module")
def shared_relay(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, **PING_ENV, **TEST_KINDS) as running:
        yield running


@pytest.fixture
def relay(shared_relay: Relay) -> Relay:
    """One real `relay api` and `relay worker`, shared by the module; an API an earlier test killed is started again."""
    api = shared_relay.api
    if api.process is None or api.process.poll() is not None:
        api.start()
    return shared_relay


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope, not session: while Playwright's sync API runs, its event loop counts as running in this
    # thread, and every async test after it would fail to start its own.
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc})")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    except Error as exc:
        playwright.stop()
        _unavailable(f"cannot launch {CHROMIUM}: {exc}")
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage and localStorage) that fails the test on an uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"the page threw: {errors}"
