"""List endpoints that take ``since`` and ``until`` refuse a range that ends before it starts (a 422 that says so),
instead of silently matching nothing; a range in order, or either end alone, still answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.conftest import Relay, relay_for_many_tests
from tests.integration.test_api import assert_json_error

if TYPE_CHECKING:
    from tests.conftest import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EARLY = "2026-01-01T10:00:00Z"
LATE = "2026-01-01T11:00:00Z"


@pytest.fixture(scope="module")
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server) as running:
        yield running


def list_tasks(relay: Relay, since: str, until: str, key: str) -> httpx.Response:
    return relay.client.get("/v1/tasks", params={"since": since, "until": until}, key=key)


def list_dead_letters(relay: Relay, since: str, until: str, key: str) -> httpx.Response:
    return relay.client.get("/v1/dead-letters", params={"since": since, "until": until}, key=key)


def bulk_replay(relay: Relay, since: str, until: str, key: str) -> httpx.Response:
    body: dict[str, Any] = {"since": since, "until": until, "dry_run": True}
    return relay.client.post("/v1/dead-letters/replay", json=body, key=key)


ENDPOINTS = {"GET /v1/tasks": list_tasks, "GET /v1/dead-letters": list_dead_letters, "bulk replay": bulk_replay}


@pytest.mark.parametrize("key", ["key-acme", "admin-token"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_since_after_until_is_a_422_that_says_so(relay: Relay, endpoint: str, key: str) -> None:
    call = ENDPOINTS[endpoint]

    detail = assert_json_error(call(relay, LATE, EARLY, key), 422)

    assert "since" in detail
    assert "after until" in detail
    assert call(relay, EARLY, LATE, key).status_code in (200, 202)
    assert call(relay, EARLY, EARLY, key).status_code in (200, 202)  # empty, as `until` is exclusive, but in order
