"""Every Lua step is loaded through one loader, and a step that declares its keys and arguments declares them as its
script's header names them, in the same order."""

from __future__ import annotations

import importlib
import re

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
    "delivery.outbox_steps",
    "delivery.shares",
    "service.api.rate_limit",
    "service.api.tenant_streams",
    "service.broker",
    "service.dramatiq_redis",
    "service.tasks.event_log",
    "service.tasks.ledger",
    "service.tasks.steps",
    "service.tasks.store",
)
# Files of functions that steps start with, not steps themselves.
SHARED_FUNCTIONS = {"delivery/clock.lua", "delivery/destination.lua", "delivery/task_line.lua"}


def loaded_steps() -> list[Step]:
    for module in STEP_MODULES:
        importlib.import_module(module)
    return list(STEPS)


def declared_names(text: str, part: str) -> tuple[str, list[str], bool]:
    """The Struct a script's header names for ``part`` (KEYS or ARGV), the names it lists in order, and whether the
    last is a repeated list (``then each of items: what each is``)."""
    found = re.search(rf"^-- {part} \((\w+)\): (.*?)$((?:\n--   .*$)*)", text, re.MULTILINE)
    assert found is not None, f"no '-- {part} (Struct): ...' line"
    listed = found.group(2) + " " + found.group(3).replace("\n--   ", " ")
    head, repeated, rest = listed.partition("then each of ")
    names = [name.strip() for name in head.split(",") if name.strip() and name.strip() != "none"]
    if repeated:
        names.append(rest.split(":")[0].strip())
    return found.group(1), names, bool(repeated)


def test_every_lua_file_is_a_step_loaded_through_the_loader_or_functions_they_share() -> None:
    names = {step.name for step in loaded_steps()}
    assert sorted(set(lua_files(ROOT)) - SHARED_FUNCTIONS - names) == []
    assert not any(name.startswith("/") for name in names)  # named from the project's root


def test_every_step_declares_its_keys_and_arguments() -> None:
    undeclared = [step.name for step in loaded_steps() if step.keys is None or step.args is None]
    assert undeclared == []


@pytest.mark.parametrize("step", [s for s in loaded_steps() if s.keys and s.args], ids=lambda s: s.name)
def test_a_steps_structs_match_its_scripts_header(step: Step) -> None:
    text = (ROOT / step.name).read_text()
    for part, struct in (("KEYS", step.keys), ("ARGV", step.args)):
        assert struct is not None
        name, listed, repeated = declared_names(text, part)
        assert name == struct.__name__
        assert listed == list(struct.__struct_fields__)
        assert repeated == struct.repeated
        assert struct.__struct_config__.array_like  # sent as the values in order


@pytest.mark.parametrize("step", [s for s in loaded_steps() if s.keys and s.args], ids=lambda s: s.name)
def test_the_highest_key_and_argument_a_script_reads_by_number_is_declared(step: Step) -> None:
    body = (ROOT / step.name).read_text()
    for part, struct in (("KEYS", step.keys), ("ARGV", step.args)):
        assert struct is not None
        used = [int(n) for n in re.findall(rf"{part}\[(\d+)\]", body)]
        if part == "KEYS" and "string.match(KEYS[1]" in step.text:
            used.append(1)  # a flow step's partition is read from its first key before the body
        fixed = len(struct.__struct_fields__) - (1 if struct.repeated else 0)
        if struct.repeated:
            assert max(used, default=0) <= fixed + 1, (step.name, part)  # the first item's, at most, by number
        else:
            assert max(used, default=0) == fixed, (step.name, part)


def test_wire_sends_the_fields_in_order() -> None:
    from delivery.scripts import StepArgs, flag, wire

    class Three(StepArgs, array_like=True, gc=False):
        first: str
        second: int
        third: str = ""

    class Listed(StepArgs, array_like=True, gc=False):
        repeated = True
        first: str
        items: list[str]

    assert wire(Three("a", 2)) == ("a", 2, "")
    assert wire(Three("a", 2, flag(True))) == ("a", 2, "1")
    assert msgspec.structs.astuple(Three("x", 0, flag(False))) == ("x", 0, "")
    assert wire(Listed("a", ["b", "c"])) == ("a", "b", "c")
    assert wire(Listed("a", [])) == ("a",)
