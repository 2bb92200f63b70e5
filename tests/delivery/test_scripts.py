"""Every Lua step is loaded through one loader, and a step that declares its keys and arguments declares them as its
script's header names them, in the same order."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import msgspec
import pytest

from delivery.scripts import STEPS, Step
from tests.slot_check import lua_files
from tests.support import ROOT

# The modules that run Lua steps: importing them loads their steps.
STEP_MODULES = (
    "delivery.dead_letters",
    "delivery.destinations",
    "delivery.epoch",
    "delivery.outbox",
    "delivery.shares",
    "service.api.rate_limit",
    "service.api.tenant_streams",
    "service.broker",
    "service.dramatiq_redis",
    "service.tasks.event_log",
    "service.tasks.ledger",
    "service.tasks.store",
)
# Files of functions that steps start with, not steps themselves.
SHARED_FUNCTIONS = {"delivery/destination.lua", "delivery/task_line.lua"}


def loaded_steps() -> list[Step]:
    for module in STEP_MODULES:
        importlib.import_module(module)
    return list(STEPS)


def declared_names(text: str, part: str) -> tuple[str, list[str]]:
    """The Struct a script's header names for ``part`` (KEYS or ARGV) and the names it lists, in order."""
    found = re.search(rf"^-- {part} \((\w+)\): (.*?)$((?:\n--   .*$)*)", text, re.MULTILINE)
    assert found is not None, f"no '-- {part} (Struct): ...' line"
    listed = found.group(2) + " " + found.group(3).replace("\n--   ", " ")
    return found.group(1), [name.strip() for name in listed.split(",") if name.strip()]


def test_every_lua_file_is_a_step_loaded_through_the_loader_or_functions_they_share() -> None:
    names = {step.name for step in loaded_steps()}
    assert sorted(set(lua_files(ROOT)) - SHARED_FUNCTIONS - names) == []
    assert not any(name.startswith("/") for name in names)  # named from the project's root


@pytest.mark.parametrize("step", [s for s in loaded_steps() if s.keys or s.args], ids=lambda s: s.name)
def test_a_steps_structs_match_its_scripts_header(step: Step) -> None:
    text = (ROOT / step.name).read_text()
    for part, struct in (("KEYS", step.keys), ("ARGV", step.args)):
        assert struct is not None
        name, listed = declared_names(text, part)
        assert name == struct.__name__
        assert listed == list(struct.__struct_fields__)
        assert struct.__struct_config__.array_like  # sent as the values in order


def test_the_highest_key_and_argument_a_declared_script_reads_is_declared() -> None:
    for step in loaded_steps():
        if not (step.keys and step.args):
            continue
        body = Path(ROOT / step.name).read_text()
        for part, struct in (("KEYS", step.keys), ("ARGV", step.args)):
            used = [int(n) for n in re.findall(rf"{part}\[(\d+)\]", body)]
            assert max(used) == len(struct.__struct_fields__), (step.name, part)


def test_wire_sends_the_fields_in_order() -> None:
    from delivery.scripts import StepArgs, flag, wire

    class Three(StepArgs, array_like=True, gc=False):
        first: str
        second: int
        third: str = ""

    assert wire(Three("a", 2)) == ("a", 2, "")
    assert wire(Three("a", 2, flag(True))) == ("a", 2, "1")
    assert msgspec.structs.astuple(Three("x", 0, flag(False))) == ("x", 0, "")
