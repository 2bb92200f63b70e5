"""WAIT ends before the connection's read times out, so that no replica acknowledging reads as such."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from delivery.replication import WAIT_MS, ReplicatedStep


def test_wait_ends_before_the_read_timeout_of_its_connection() -> None:
    step = ReplicatedStep(cast(Any, None))
    assert step.wait_ms_on(SimpleNamespace(connection_kwargs={"socket_timeout": 2.0})) == 1500
    assert step.wait_ms_on(SimpleNamespace(connection_kwargs={"socket_timeout": 10.0})) == WAIT_MS
    assert step.wait_ms_on(SimpleNamespace(connection_kwargs={})) == WAIT_MS
