"""How the worker's processes count the signals that stop them (service.worker.process.StopSignals)."""

from __future__ import annotations

import signal

import pytest

from service.worker import process
from service.worker.process import StopSignals


def test_a_sigterm_soon_after_the_first_is_the_same_stop_and_a_later_one_a_second() -> None:
    stops = StopSignals()
    assert stops.note(signal.SIGTERM) == 1
    assert stops.note(signal.SIGTERM) == 1  # the group's, then the supervisor's own
    assert stops.note(signal.SIGTERM) == 1


def test_a_second_ctrl_c_counts_however_soon() -> None:
    stops = StopSignals()
    assert stops.note(signal.SIGINT) == 1
    assert stops.note(signal.SIGINT) == 2
    stops = StopSignals()
    assert stops.note(signal.SIGTERM) == 1
    assert stops.note(signal.SIGINT) == 2


def test_a_sigterm_past_the_window_is_a_second_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(process.time, "monotonic", lambda: now[0])
    stops = StopSignals()
    assert stops.note(signal.SIGTERM) == 1
    now[0] += process.SAME_STOP_S + 0.1
    assert stops.note(signal.SIGTERM) == 2
