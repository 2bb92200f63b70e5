"""Kind loops: a loop held by blocking code is found, named and set aside; other runs go on elsewhere."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from service.worker.kind_loops import RESTART_AFTER_S, STALL_S, WATCH_INTERVAL_S, KindLoops


async def _blocks(seconds: float) -> str:
    time.sleep(seconds)  # the mistake under test: a blocking call in a coroutine
    return "blocked"


async def _answers(value: str) -> str:
    await asyncio.sleep(0)
    return value


async def test_a_run_behind_a_blocked_loop_moves_to_another_and_the_holder_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loops = KindLoops()
    loops.start()
    try:
        held = loops.run("task_blocks", lambda: _blocks(2.0))
        await asyncio.sleep(0.05)  # it has started, and holds its loop
        waiting = loops.run("task_echo", lambda: _answers("echo"))
        started = time.monotonic()

        assert await asyncio.wait_for(waiting.outcome, timeout=1.5) == "echo"

        assert time.monotonic() - started < STALL_S + 10 * WATCH_INTERVAL_S
        assert any("held for" in r.message and "by task task_blocks" in r.message for r in caplog.records)
        assert not held.outcome.done()
        assert await asyncio.wait_for(held.outcome, timeout=5) == "blocked"  # its result when it returns
        await asyncio.sleep(3 * WATCH_INTERVAL_S)
        assert any(
            "answers again after being held for" in r.message and "task_blocks" in r.message for r in caplog.records
        )
    finally:
        await loops.stop()


async def test_runs_handed_over_together_do_not_queue_behind_the_first_that_blocks() -> None:
    """A burst: one tenant's blocking runs and another's echo handed to the same loop in one turn. Only the run the
    loop got to first holds it; the others had not started and run elsewhere, each blocker on a loop of its own."""
    # Blocks long enough that "not behind one" leaves seconds of margin on a loaded machine: the echo moves once the
    # loop has stalled (STALL_S, half a second), far sooner than any block ends.
    block_s = 4.0
    loops = KindLoops()
    loops.start()
    try:
        blockers = [loops.run(f"task_block_{n}", lambda: _blocks(block_s)) for n in range(3)]
        echo = loops.run("task_echo", lambda: _answers("echo"))
        started = time.monotonic()

        assert await asyncio.wait_for(echo.outcome, timeout=block_s - 1) == "echo"  # not behind a block
        echoed_s = time.monotonic() - started
        assert not any(b.outcome.done() for b in blockers)  # answered while all three still block
        results = await asyncio.wait_for(asyncio.gather(*(b.outcome for b in blockers)), timeout=3 * block_s)

        assert results == ["blocked"] * 3
        # Side by side, not one after another: two in a row would take 8 s, three 12 s.
        assert time.monotonic() - started < 2 * block_s - 1, time.monotonic() - started
        assert echoed_s < block_s - 1
    finally:
        await loops.stop()


async def test_a_cancelled_run_ends_after_its_finally_and_a_given_up_one_at_once() -> None:
    loops = KindLoops()
    loops.start()
    cleaned: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            cleaned.append("finally")

    try:
        run = loops.run("task_1", cleans_up)
        await asyncio.sleep(0.05)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run.outcome, timeout=2)
        assert cleaned == ["finally"]

        stuck = loops.run("task_2", lambda: _blocks(1.0))
        await asyncio.sleep(0.05)
        stuck.give_up()
        assert stuck.outcome.cancelled()
    finally:
        await loops.stop()


@pytest.mark.slow  # loops held for seconds
async def test_a_process_whose_loops_are_all_held_asks_to_restart(caplog: pytest.LogCaptureFixture) -> None:
    restarts: list[bool] = []
    loops = KindLoops(max_loops=2, on_exhausted=lambda: restarts.append(True))
    loops.start()
    try:
        loops.run("task_1", lambda: _blocks(2.0 + RESTART_AFTER_S))
        await asyncio.sleep(STALL_S + 3 * WATCH_INTERVAL_S)
        loops.run("task_2", lambda: _blocks(1.5 + RESTART_AFTER_S))
        await asyncio.sleep(STALL_S + 3 * WATCH_INTERVAL_S)
        assert restarts == []  # not yet: a loop held for a moment may answer again
        await asyncio.sleep(RESTART_AFTER_S)

        assert restarts == [True]
        assert any(
            r.levelno == logging.ERROR and "all 2 kind loops have been held" in r.message for r in caplog.records
        )
    finally:
        await asyncio.sleep(2.5)  # both loops answer again and stop
        await loops.stop()


async def test_a_kind_that_calls_sys_exit_fails_its_run_and_its_loop_goes_on() -> None:
    async def exits() -> None:
        raise SystemExit(3)

    loops = KindLoops()
    loops.start()
    try:
        with pytest.raises(RuntimeError, match="SystemExit"):
            await asyncio.wait_for(loops.run("task_1", exits).outcome, timeout=2)
        assert await asyncio.wait_for(loops.run("task_2", lambda: _answers("next")).outcome, timeout=2) == "next"
    finally:
        await loops.stop()
