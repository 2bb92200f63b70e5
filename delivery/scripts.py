"""Every Lua step Relay runs, loaded one way.

A step is a ``.lua`` file beside the module that runs it, read once at import: ``step(__file__, "ack.lua")``. Every
step starts with ``redis_now()`` (``delivery/clock.lua``): the times a step writes and compares are Redis's. The
steps that move a destination's flow or a task's line of webhooks (``flow=True``) start with the functions they
share (``delivery/destination.lua``, ``delivery/task_line.lua``) and with the names of their partition's keys,
derived from the step's first key: every key of a partition carries its hash tag, so a name built from it stays in
the step's slot (see :mod:`delivery.keys`). A step is then bound to a client, either plainly (one trip per call) or
batched (its calls share the trips of their event-loop turn, see :mod:`delivery.redis_batch`).

A step whose keys and arguments are many declares them as Structs (:class:`StepKeys`, :class:`StepArgs`): their fields
in the order the script reads them, named as the script's header names them (``-- KEYS (AppendKeys): task,
events, ...``), which ``tests/delivery/test_scripts.py`` checks; the call sends them as they are
(:func:`wire`), with no copy into a list by hand. Its reply is read into a Struct of its own by the caller.

Nothing else in Relay builds a script: no inline text, no file read elsewhere. The one exception is Dramatiq's own
dispatch script, wrapped with :meth:`Step.of_text` so that it is bound like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from redis.commands.core import AsyncScript

from delivery import keys
from delivery.redis_batch import BatchedScript, batched
from delivery.script_call import AsyncStepCall, StepCall

_HERE = Path(__file__).parent
_ROOT = _HERE.parent
# The functions shared by the steps of destinations and of tasks' webhook lines.
_FLOW_FUNCTIONS = ("destination.lua", "task_line.lua")
# What every step starts with: redis_now(), Redis's own clock.
_CLOCK = (_HERE / "clock.lua").read_text()


class StepKeys(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The keys of a step, in the order its script reads them (``KEYS[1]``, ``KEYS[2]``, ...).

    A step that takes a list of like keys after its others (one per item) sets ``repeated`` and declares that list as
    its last field; its header names it after ``then each of``.
    """

    repeated: ClassVar[bool] = False


class StepArgs(msgspec.Struct, array_like=True, gc=False):
    """The arguments of a step, in the order its script reads them (``ARGV[1]``, ...), each as Redis takes it
    (``str``, ``bytes``, ``int`` or ``float``; a flag is ``"1"`` or ``""``).

    A step that takes a list of items after its other arguments sets ``repeated`` and declares the items, flat, as
    its last field; its header names it after ``then each of`` with what each item is.
    """

    repeated: ClassVar[bool] = False


def wire(values: StepKeys | StepArgs) -> tuple[Any, ...]:
    """The values of ``values`` in their order, as a script call sends them (a repeated last field spread out)."""
    fields = msgspec.structs.astuple(values)
    if values.repeated:
        return (*fields[:-1], *fields[-1])
    return fields


def flag(value: bool) -> str:
    """A flag as the scripts read it."""
    return "1" if value else ""


@dataclass(frozen=True, slots=True)
class Step:
    """One Lua step: the file it came from (from the project's root), the text Redis runs, and the Structs of its
    keys and arguments when it declares them."""

    name: str
    text: str
    keys: type[StepKeys] | None = None
    args: type[StepArgs] | None = None

    @classmethod
    def of_text(cls, name: str, text: str | bytes) -> Step:
        """A step whose text comes from elsewhere (a library's script)."""
        return cls(name, text.decode() if isinstance(text, bytes) else text)

    def bind(self, redis: Any) -> Any:
        """The step on ``redis`` (asyncio, sync or cluster client), one trip per call, called with ``keys=`` and
        ``args=`` as redis-py's ``Script`` is; sent whole to the node of its keys after a ``SCRIPT FLUSH`` or a
        restart (see :mod:`delivery.script_call`)."""
        script = redis.register_script(self.text)
        return AsyncStepCall(redis, script) if isinstance(script, AsyncScript) else StepCall(redis, script)

    def batched(self, redis: Any) -> BatchedScript:
        """The step on ``redis``, its calls sharing the trips of their event-loop turn with the other calls made
        through the same client's batcher."""
        return batched(redis).register_script(self.text)


def _flow_prelude() -> str:
    """The key names a flow step builds, from its first key's partition: the single partition of a standalone
    store has no tag, and its keys are the ones Relay always wrote."""
    return f"""
local PART = string.match(KEYS[1], '^{keys.PREFIX}{{p[^}}]*}}:') or '{keys.PREFIX}'
local READY, ALL, TENANT_PREFIX = PART .. 'dst:ready', PART .. 'dst:all', PART .. 'dst:tenant:'
local DUE_KEY, DELIVERY_PREFIX, ACK_PREFIX = PART .. 'due', PART .. 'dlv:', PART .. 'ack:'
local DST_HEAD, DST_TAIL = PART .. 'dst:', ':'
if PART == '{keys.PREFIX}' then
    DST_HEAD, DST_TAIL = '{keys.PREFIX}{{', '}}:'
end
"""


# Every step loaded from a file, so that a test can check each one's declarations against its script.
STEPS: list[Step] = []


def step(
    beside: str,
    name: str,
    *,
    flow: bool = False,
    keys: type[StepKeys] | None = None,
    args: type[StepArgs] | None = None,
) -> Step:
    """The step in file ``name`` of the folder of module file ``beside`` (a module passes its ``__file__``).

    ``flow``: the step moves destinations or tasks' webhook lines, and starts with their shared functions.
    ``keys``, ``args``: the Structs it is called with, when it declares them.
    """
    path = Path(beside).parent / name
    body = path.read_text()
    parts = [_CLOCK]
    if flow:
        parts += [_flow_prelude(), *((_HERE / shared).read_text() for shared in _FLOW_FUNCTIONS)]
    text = "\n".join([*parts, body])
    try:
        shown = str(path.resolve().relative_to(_ROOT.resolve()))
    except ValueError:
        shown = path.name
    loaded = Step(shown, text, keys, args)
    STEPS.append(loaded)
    return loaded
