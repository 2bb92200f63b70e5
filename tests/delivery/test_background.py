"""Stopping background tasks whose cancellation gets lost (as it can inside redis-py's timed reads on 3.11)."""

from __future__ import annotations

import asyncio

from delivery import background


async def test_a_loop_that_swallows_one_cancel_is_stopped_all_the_same() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed == 0:  # the first cancel is lost, as a raced wait_for loses it
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(background.stop(task), timeout=5)
    assert task.cancelled()
    assert swallowed == 1


async def test_a_task_that_will_not_stop_is_left_after_its_patience() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(background.stop(task, patience_s=0.3), timeout=5)
    assert not task.done()  # stop returned (a shutdown goes on) though the task did not end
    release.set()
    await asyncio.wait_for(task, timeout=5)


async def test_stop_takes_none_and_ended_tasks() -> None:
    await background.stop(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await background.stop(done)
