"""What a kind declares about retrying its work: which failures are retried, how many times, after how long."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from delivery.errors import ConfigError
from service.kinds import DEFAULT_RETRY_DELAYS_S, KindRegistry, Retry, TaskKind, load_kinds


class Transient(Exception):
    pass


def declared(**options: object) -> TaskKind:
    registry = KindRegistry()
    registry.register("k", **options)(lambda data, ctx: None)  # type: ignore[arg-type]
    found = registry.get("k")
    assert found is not None
    return found


def test_a_kind_retries_nothing_unless_it_says_so() -> None:
    assert declared().retry_delay_s(1, Retry()) is None


def test_retry_is_always_retryable_and_other_errors_only_when_declared() -> None:
    k = declared(max_retries=2, retry_on=(Transient,))
    assert k.retry_delay_s(1, Retry()) == DEFAULT_RETRY_DELAYS_S[0]
    assert k.retry_delay_s(1, Transient()) == DEFAULT_RETRY_DELAYS_S[0]
    assert k.retry_delay_s(1, ValueError()) is None
    assert declared(max_retries=2).retry_delay_s(1, Transient()) is None


def test_the_delays_follow_the_schedule_then_repeat_its_last_and_stop_after_max_retries() -> None:
    k = declared(max_retries=6)
    delays = [k.retry_delay_s(attempt, Retry()) for attempt in range(1, 8)]
    assert delays == [1.0, 10.0, 60.0, 300.0, 300.0, 300.0, None]


def test_a_retrys_own_delay_wins() -> None:
    k = declared(max_retries=1, retry_delays_s=(5,))
    assert k.retry_delay_s(1, Retry("later", delay_s=42)) == 42
    assert k.retry_delay_s(1, Retry("soon")) == 5
    assert k.retry_delay_s(2, Retry("too many", delay_s=1)) is None


@pytest.mark.parametrize(
    "options",
    [{"max_retries": -1}, {"max_retries": 101}, {"retry_delays_s": ()}, {"retry_delays_s": (-1,)}, {"retry_on": (42,)}],
)
def test_a_bad_declaration_fails_at_import(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        declared(**options)


def test_a_retry_delay_out_of_range_is_the_kinds_bug() -> None:
    with pytest.raises(ValueError, match="delay_s"):
        Retry(delay_s=-1)


def test_a_kinds_module_in_the_directory_relay_starts_in_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_relay_kinds.py").write_text(
        "from service.kinds import kind\n\n@kind('my-hello')\nasync def hello(data, ctx):\n    return 'hi'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_relay_kinds", raising=False)

    found = load_kinds(("my_relay_kinds",))

    assert found.get("my-hello") is not None
    del found.kinds["my-hello"]


class Defaults(msgspec.Struct):
    size: int = 3


class Needs(msgspec.Struct):
    size: int


def test_no_input_for_an_object_kind_reads_as_its_defaults_or_names_what_it_needs() -> None:
    assert declared(input_type=Defaults).parse_input(None) == Defaults(size=3)
    with pytest.raises(msgspec.ValidationError, match="size"):
        declared(input_type=Needs).parse_input(None)
    assert declared().parse_input(None) is None  # a kind that takes anything gets what it was given
