"""The kinds every Relay has: ``echo``, ``sleep`` and ``fail``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec

from delivery.errors import RelayError
from service.kinds import TaskContext, kind

# The longest a ``sleep`` task may ask for.
MAX_SLEEP_S = 3600.0


class TaskFailure(RelayError):
    """What the ``fail`` kind raises."""


class SleepInput(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_SLEEP_S)]


class FailInput(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(max_length=2000)] = "failed on purpose"


@kind("echo")
async def echo(data: Any, ctx: TaskContext) -> Any:
    """Returns its input."""
    return data


@kind("sleep", input_type=SleepInput, time_limit_s=MAX_SLEEP_S + 60)
async def sleep(data: SleepInput, ctx: TaskContext) -> dict[str, float]:
    """Sleeps ``seconds``, reporting progress at least once a second."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + data.seconds
    await ctx.progress(0, "started")
    while (now := loop.time()) < deadline:
        await asyncio.sleep(min(1.0, deadline - now))
        elapsed = min(data.seconds, loop.time() - started)
        percent = 100.0 if data.seconds == 0 else round(100 * elapsed / data.seconds, 1)
        await ctx.progress(percent, f"slept {elapsed:.1f} of {data.seconds:g} s")
    return {"slept": data.seconds}


@kind("fail", input_type=FailInput)
async def fail(data: FailInput, ctx: TaskContext) -> None:
    """Always raises."""
    raise TaskFailure(data.message)
