"""`relay cluster`'s lines on the processes alive."""

from __future__ import annotations

from service.cli.cluster import _members as shown


def test_the_cli_says_unknown_rather_than_zero() -> None:
    assert shown("workers alive", None).startswith("workers alive: unknown")
    assert shown("workers alive", []) == "workers alive: 0"
    assert shown("workers alive", ["h:1"]) == "workers alive: 1 (h:1)"
