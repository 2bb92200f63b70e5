"""Lua steps that concurrent tasks start in the same turn of the event loop go to Redis in one pipeline.

A worker finishes many tasks at once, and each end is one Lua step (``EVALSHA``). Sent one by one, every step
pays redis-py's whole path: a connection from the pool, packing, a write, a read and the parse. Sent
together, a turn's steps share one connection, one write and one read. Each step stays its own atomic
script; only the trip is shared, so a step's outcome is what it would have been alone.

A step that is alone in its turn goes out by itself, as before. A failure of the trip (Redis away, a
timeout) reaches every caller of that trip, each of which tries again on its own terms.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError

# Most steps one trip carries; a longer turn is split into several trips.
MAX_BATCH = 128

_Item = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Gathers the script calls of one event-loop turn and sends them in one pipeline."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._queue: list[_Item] = []
        self._sending: set[asyncio.Task[None]] = set()

    def register_script(self, text: str) -> BatchedScript:
        """A script whose calls share trips with the other calls of their turn (same call as redis-py's)."""
        return BatchedScript(self, self._redis.register_script(text))

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = asyncio.create_task(self._send(queue[start : start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Item]) -> None:
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            await _settle(future, script(keys=keys, args=args))
            return
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            # EVALSHA as a plain command: a Script in a pipeline makes redis-py ask SCRIPT EXISTS on every trip.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except DataError:  # a call's argument Redis cannot take: nothing was sent, and alone only that call fails
            for script, keys, args, future in batch:
                await _settle(future, script(keys=keys, args=args))
            return
        except Exception as exc:  # noqa: BLE001 (what the trip raised is each caller's to see, as it would be alone)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the worker stops): the callers' own awaits end with it
            for *_, future in batch:
                future.cancel()
            raise
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):  # Redis restarted and forgot it: the script loads it again
                await _settle(future, script(keys=keys, args=args))
            elif future.done():
                continue
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class BatchedScript:
    """Called as redis-py's AsyncScript is: ``await script(keys=[...], args=[...])``."""

    def __init__(self, batcher: ScriptBatcher, script: AsyncScript) -> None:
        self._batcher = batcher
        self.script = script

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> asyncio.Future[Any]:
        return self._batcher.call(self.script, keys, args)


async def _settle(future: asyncio.Future[Any], call: Any) -> None:
    try:
        reply = await call
    except Exception as exc:  # noqa: BLE001 (passed on to the caller, whatever it is)
        if not future.done():
            future.set_exception(exc)
        return
    except BaseException:
        future.cancel()
        raise
    if not future.done():
        future.set_result(reply)


_batchers: weakref.WeakKeyDictionary[aioredis.Redis, ScriptBatcher] = weakref.WeakKeyDictionary()


def batched(redis: aioredis.Redis) -> ScriptBatcher:
    """The batcher of ``redis`` (one per client, so that every store on that client shares its trips)."""
    batcher = _batchers.get(redis)
    if batcher is None:
        batcher = _batchers[redis] = ScriptBatcher(redis)
    return batcher
