"""A clock the tests move by hand, for the modules that read ``time.time()`` (rate limits, stream places)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType, SimpleNamespace

import pytest


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModuleType], Clock]:
    """``fake_time(module)``: the module's ``time.time()`` reads a :class:`Clock` the test moves."""

    def install(module: ModuleType) -> Clock:
        fake = Clock()
        monkeypatch.setattr(module, "time", SimpleNamespace(time=fake.time))
        return fake

    return install
