"""Redis calls that concurrent tasks make in the same turn of the event loop go to Redis in one pipeline.

A worker finishes many tasks at once, and each end is one Lua step (``EVALSHA``); an API node serves many
sockets at once, and each subscription reads a record and a log. Sent one by one, every call pays redis-py's
whole path: a connection from the pool, packing, a write, a read and the parse. Sent together, a turn's calls
share one connection, one write and one read. Each call stays what it was (a Lua step stays its own atomic
script); only the trip is shared, so a call's outcome is what it would have been alone.

A call that is alone in its turn goes out by itself, as before. A group (:meth:`ScriptBatcher.commands`) is
never split across trips, so its commands run in the order given. A failure of the trip (Redis away, a
timeout) reaches every caller of that trip, each of which tries again on its own terms.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError

# Most calls one trip carries; a longer turn is split into several trips (a group is never split).
MAX_BATCH = 128


@dataclass(slots=True)
class _Item:
    """One caller's part of a trip: a Lua step (``script``), or plain ``commands`` answered as a list."""

    future: asyncio.Future[Any]
    script: AsyncScript | None = None
    keys: Sequence[Any] = ()
    args: Sequence[Any] = ()
    commands: Sequence[Sequence[Any]] = ()
    single: bool = False  # one plain command: its caller gets its reply, not a list of one

    @property
    def size(self) -> int:
        return 1 if self.script is not None else len(self.commands)

    def queue_on(self, pipe: Any) -> None:
        if self.script is not None:
            # EVALSHA as a plain command: a Script in a pipeline makes redis-py ask SCRIPT EXISTS on every trip.
            pipe.execute_command("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        else:
            for command in self.commands:
                pipe.execute_command(*command)


class ScriptBatcher:
    """Gathers the Redis calls of one event-loop turn and sends them in one pipeline."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._queue: list[_Item] = []
        self._sending: set[asyncio.Task[None]] = set()

    def register_script(self, text: str) -> BatchedScript:
        """A script whose calls share trips with the other calls of their turn (same call as redis-py's)."""
        return BatchedScript(self, self._redis.register_script(text))

    def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        return self._queue_item(_Item(self._future(), script=script, keys=keys, args=args))

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """One plain command (``"GET", key``); its reply, parsed as redis-py parses it."""
        return self._queue_item(_Item(self._future(), commands=(args,), single=True))

    def commands(self, *commands: Sequence[Any]) -> asyncio.Future[list[Any]]:
        """Plain commands run in this order in one trip; their replies. The first that failed raises."""
        if not commands:
            raise ValueError("no commands")
        return self._queue_item(_Item(self._future(), commands=commands))

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _queue_item(self, item: _Item) -> asyncio.Future[Any]:
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queue.append(item)
        return item.future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        trip: list[_Item] = []
        size = 0
        for item in queue:
            if trip and size + item.size > MAX_BATCH:
                self._start(trip)
                trip, size = [], 0
            trip.append(item)
            size += item.size
        if trip:
            self._start(trip)

    def _start(self, trip: list[_Item]) -> None:
        task = asyncio.create_task(self._send(trip))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Item]) -> None:
        if len(batch) == 1 and (batch[0].script is not None or batch[0].single):
            await self._alone(batch[0])
            return
        pipe = self._redis.pipeline(transaction=False)
        for item in batch:
            item.queue_on(pipe)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except DataError as exc:  # an argument Redis cannot take: nothing was sent, and only its call fails
            if len(batch) == 1:  # a group alone: it is that call
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
            else:
                for item in batch:
                    await self._send([item])
            return
        except Exception as exc:  # noqa: BLE001 (what the trip raised is each caller's to see, as it would be alone)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        except BaseException:  # cancelled (the worker stops): the callers' own awaits end with it
            for item in batch:
                item.future.cancel()
            raise
        at = 0
        for item in batch:
            mine, at = replies[at : at + item.size], at + item.size
            if item.future.done():
                continue
            if item.script is not None and isinstance(mine[0], NoScriptError):
                await self._alone(item)  # Redis restarted and forgot it: the script loads it again
            else:
                _answer(item, mine)

    async def _alone(self, item: _Item) -> None:
        """A Lua step or a single command by itself, through redis-py's own call (which loads a forgotten script)."""
        if item.script is not None:
            await _settle(item.future, item.script(keys=item.keys, args=item.args))
        else:
            await _settle(item.future, self._redis.execute_command(*item.commands[0]))  # type: ignore[no-untyped-call]


def _answer(item: _Item, replies: Sequence[Any]) -> None:
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        item.future.set_exception(failed)
    elif item.script is not None or item.single:
        item.future.set_result(replies[0])
    else:
        item.future.set_result(list(replies))


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
