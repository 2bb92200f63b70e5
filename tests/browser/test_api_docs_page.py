"""``/schema/swagger`` in a real Chromium that can reach nothing but this machine: Swagger UI still draws the API."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.browser.playwright_guard import expect

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Route

    from tests.integration.conftest import Relay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@pytest.mark.parametrize("path", ["/schema/swagger", "/schema"])
def test_swagger_ui_draws_the_operations_with_no_request_leaving_the_machine(
    page: Page, relay: Relay, path: str
) -> None:
    refused: list[str] = []
    violations: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    def note_violation(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.route("**/*", only_loopback)
    page.on("console", note_violation)
    page.goto(relay.api.url + path)

    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=15_000)
    expect(page.locator(".opblock-summary-path", has_text="/v1/tasks").first).to_be_visible()
    assert operations.count() >= 10
    expect(page.locator(".info .title")).to_contain_text("Relay")

    # One operation opens and shows its parameters: the scripts run, not just the first paint.
    page.locator(".opblock-summary", has_text="/v1/tasks/{task_id}").first.click()
    expect(page.locator(".opblock-body .parameters").first).to_be_visible()

    assert refused == [], f"the page asked for other hosts: {refused}"
    assert violations == [], f"the page's policy refused something: {violations}"


def test_authorize_with_a_tenant_key_and_try_it_out_answers_200(page: Page, relay: Relay) -> None:
    page.goto(relay.api.url + "/schema/swagger")
    authorize = page.locator(".scheme-container button.authorize")
    expect(authorize).to_be_visible(timeout=15_000)
    authorize.click()

    tenant = page.locator(".auth-container", has_text="tenantKey")
    tenant.locator("input").first.fill("key-acme")
    tenant.locator("button.authorize").click()
    tenant.locator("button.btn-done").click()

    operation = page.locator(".opblock-get", has=page.locator('.opblock-summary-path[data-path="/v1/tasks"]'))
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status")
    expect(status).to_have_text("200", timeout=15_000)
