"""What a process says while a key's node is away: once an outage, then once when it answers again."""

from __future__ import annotations

import logging

import pytest

from delivery.storage_away import Outages

log = logging.getLogger("relay.test")


def test_an_outage_is_said_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    outages = Outages(log, "the submit rate", fallback="cannot be counted ({cause}); limiting here", again="is back")
    with caplog.at_level(logging.INFO, logger="relay.test"):
        outages.back("tenant acme")  # never away: nothing to say
        for _ in range(3):
            outages.away("tenant acme", ConnectionError("refused"))
        outages.away("tenant globex", TimeoutError("stalled"))
        outages.back("tenant acme")
        outages.back("tenant acme")
        outages.away("tenant acme", ConnectionError("refused again"))
        outages.forget("tenant globex")
        outages.back("tenant globex")  # forgotten: its end goes unsaid
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "the submit rate of tenant acme cannot be counted (ConnectionError: refused); limiting here"),
        ("WARNING", "the submit rate of tenant globex cannot be counted (TimeoutError: stalled); limiting here"),
        ("INFO", "the submit rate of tenant acme is back"),
        ("WARNING", "the submit rate of tenant acme cannot be counted (ConnectionError: refused again); limiting here"),
    ]
