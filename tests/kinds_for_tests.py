"""Task kinds that only the tests load (RELAY_TASK_MODULES=tests.kinds_for_tests): the API and the workers run
with cwd at the repository root, so this module imports as ``tests.kinds_for_tests`` in both."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import msgspec

from service.kinds import Retry, TaskContext, kind

SLOW_TIME_LIMIT_S = 1.0


@kind("slow", time_limit_s=SLOW_TIME_LIMIT_S)
async def slow(data: object, ctx: TaskContext) -> str:
    """Sleeps well past its own one-second time limit."""
    await asyncio.sleep(5)
    return "should not get here"


class CountInput(msgspec.Struct, forbid_unknown_fields=True):
    steps: Annotated[int, msgspec.Meta(ge=1, le=20)]


@kind("count_sync", input_type=CountInput)
def count_sync(data: CountInput, ctx: TaskContext) -> dict[str, int]:
    """A plain (threaded) kind: counts to ``steps``, reporting progress after each step."""
    total = 0
    for step in range(1, data.steps + 1):
        time.sleep(0.05)
        total += step
        ctx.progress_sync(100 * step / data.steps, f"step {step} of {data.steps}")
    return {"steps": data.steps, "total": total}


class BurstInput(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[int, msgspec.Meta(ge=1, le=50_000)]
    message_bytes: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0


@kind("burst", input_type=BurstInput)
async def burst(data: BurstInput, ctx: TaskContext) -> dict[str, int]:
    """Reports ``events`` progress events (messages of ``message_bytes``) as fast as the worker can write them."""
    message = "x" * data.message_bytes
    for n in range(1, data.events + 1):
        await ctx.progress(100 * n / data.events, message)
    return {"events": data.events}


class SizedInput(msgspec.Struct, forbid_unknown_fields=True):
    result_bytes: Annotated[int, msgspec.Meta(ge=0, le=20_000_000)] = 0
    progress_bytes: Annotated[int, msgspec.Meta(ge=0, le=20_000_000)] | None = None  # None: no progress
    error_bytes: Annotated[int, msgspec.Meta(ge=0, le=20_000_000)] | None = None  # raise an error this long
    go_on: bool = False  # catch what progress raises, and go on


@kind("sized", input_type=SizedInput, max_retries=2, retry_on=(Exception,), retry_delays_s=(0.1,))
async def sized(data: SizedInput, ctx: TaskContext) -> str:
    """Hands back as many bytes as asked: a progress message, then an error or a result. It retries anything."""
    if data.progress_bytes is not None:
        try:
            await ctx.progress(50, "p" * data.progress_bytes)
        except Exception:
            if not data.go_on:
                raise
    if data.error_bytes is not None:
        raise ValueError("e" * data.error_bytes)
    return "r" * data.result_bytes


class FlakyInput(msgspec.Struct, forbid_unknown_fields=True):
    failures: Annotated[int, msgspec.Meta(ge=0, le=10)]  # attempts that fail before one succeeds
    delay_s: float | None = None  # the Retry's own delay (None: the kind's delays)


class Flaky(Exception):
    """A transient failure that the ``flaky_error`` kind declares worth retrying."""


FLAKY_RETRIES = 3


@kind("flaky", input_type=FlakyInput, max_retries=FLAKY_RETRIES, retry_delays_s=(0.2, 0.4))
async def flaky(data: FlakyInput, ctx: TaskContext) -> dict[str, int]:
    """Raises Retry on its first ``failures`` attempts, then succeeds."""
    await ctx.progress(0, f"attempt {ctx.attempt}")
    if ctx.attempt <= data.failures:
        raise Retry(f"attempt {ctx.attempt} failed on purpose", delay_s=data.delay_s)
    return {"attempts": ctx.attempt}


@kind("flaky_error", input_type=FlakyInput, max_retries=FLAKY_RETRIES, retry_on=(Flaky,), retry_delays_s=(0.2,))
def flaky_error(data: FlakyInput, ctx: TaskContext) -> dict[str, int]:
    """A plain kind that raises its own retryable error on its first ``failures`` attempts (ValueError when
    ``failures`` is 10: not retryable)."""
    if data.failures == 10:
        raise ValueError("not worth retrying")
    if ctx.attempt <= data.failures:
        raise Flaky(f"attempt {ctx.attempt}")
    return {"attempts": ctx.attempt}


class HeldInput(msgspec.Struct, forbid_unknown_fields=True):
    marker: str  # a file the kind writes what became of its run to


@kind("held", input_type=HeldInput)
async def held(data: HeldInput, ctx: TaskContext) -> str:
    """Writes ``started`` to its marker file, then waits a minute; its ``finally`` adds how the wait ended, so that a
    test sees from outside the worker that a cancelled run's ``finally`` ran."""
    marker = Path(data.marker)
    marker.write_text("started\n")
    ended = "returned"
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        ended = "cancelled"
        raise
    finally:
        with marker.open("a") as out:
            out.write(f"finally: {ended}\n")
    return "waited a minute"


class BlockInput(msgspec.Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=120)]
    runs_file: str | None = None  # a line is appended to it at each run, so that a test can count them


def _blocks(data: BlockInput) -> dict[str, float]:
    if data.runs_file is not None:
        with open(data.runs_file, "a") as runs:
            runs.write("ran\n")
    time.sleep(data.seconds)  # called from an async kind: the mistake under test, it holds the event loop
    return {"blocked": data.seconds}


@kind("block", input_type=BlockInput)
async def block(data: BlockInput, ctx: TaskContext) -> dict[str, float]:
    """An async kind that blocks its event loop for ``seconds`` (time.sleep), as a user's code will one day."""
    return _blocks(data)


BLOCK_TIME_LIMIT_S = 2.0


@kind("block_limited", input_type=BlockInput, time_limit_s=BLOCK_TIME_LIMIT_S)
async def block_limited(data: BlockInput, ctx: TaskContext) -> dict[str, float]:
    """``block`` with a two-second time limit."""
    return _blocks(data)


class RecordedInput(msgspec.Struct, forbid_unknown_fields=True):
    runs_file: str  # a line per run: task id, attempt, time.monotonic() (the machine's clock, never a faked one)
    failures: Annotated[int, msgspec.Meta(ge=0, le=3)] = 0  # attempts that fail (Retry) before one succeeds
    delay_s: float | None = None  # the Retry's delay (None: the kind's)


@kind("recorded", input_type=RecordedInput, max_retries=3, retry_delays_s=(2.0,))
async def recorded(data: RecordedInput, ctx: TaskContext) -> dict[str, int]:
    """Writes down each of its runs, with when it started, then fails its first ``failures`` attempts."""
    with open(data.runs_file, "a") as runs:
        runs.write(f"{ctx.task_id} {ctx.attempt} {time.monotonic()!r}\n")
    if ctx.attempt <= data.failures:
        raise Retry(f"attempt {ctx.attempt} failed on purpose", delay_s=data.delay_s)
    return {"attempts": ctx.attempt}
