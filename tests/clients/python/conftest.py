"""Fixtures of the Python client's tests: real Relay processes (those of tests/integration), and clients of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from relay_client import AsyncRelay, Relay

from tests.conftest import RedisServer
from tests.integration.conftest import Relay as RelayProcesses
from tests.integration.conftest import _store_layout, receiver, relay_for_many_tests, start_relay

# The fixtures of tests/integration that these tests use too.
__all__ = ["_store_layout", "receiver", "start_relay"]

TENANT_KEY = "key-acme"
ADMIN_TOKEN = "admin-token"


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[RelayProcesses]:
    """One API and one worker for a whole module: each test counts only its own tasks."""
    with relay_for_many_tests(redis_server) as processes:
        yield processes


@pytest.fixture
def relay(shared: RelayProcesses) -> Iterator[Relay]:
    """A tenant's client of the module's Relay."""
    with Relay(shared.api.url, TENANT_KEY) as client:
        yield client


@pytest.fixture
def admin(shared: RelayProcesses) -> Iterator[Relay]:
    """The operator's client of the module's Relay."""
    with Relay(shared.api.url, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
async def async_relay(shared: RelayProcesses) -> AsyncIterator[AsyncRelay]:
    async with AsyncRelay(shared.api.url, TENANT_KEY) as client:
        yield client
