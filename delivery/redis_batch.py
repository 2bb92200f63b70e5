"""Redis calls that concurrent tasks make in the same turn of the event loop go to Redis in one pipeline.

A worker finishes many tasks at once, and each end is one Lua step (``EVALSHA``); an API node serves many
sockets at once, and each subscription reads a record and a log. Sent one by one, every call pays redis-py's
whole path: a connection from the pool, packing, a write, a read and the parse. Sent together, a turn's calls
share one connection, one write and one read. Each call stays what it was (a Lua step stays its own atomic
script); only the trip is shared, so a call's outcome is what it would have been alone.

A call that is alone in its turn goes out by itself, as before. A group (:meth:`ScriptBatcher.commands`) is
never split across trips, so its commands run in the order given. A failure of the trip (Redis away, a
timeout) reaches every caller of that trip, each of which tries again on its own terms.

On a Redis Cluster a turn's calls make one trip per master, sent side by side, so that a master that is away fails
only the calls whose keys it serves. Each command goes to the master of its keys' slot; a group whose commands live
on several masters is split between their trips, and keeps its order on each (commands on different slots touch
different keys, so no caller can tell). A call the cluster client refuses to send (a script whose keys map to
several slots) fails alone, with redis-py's own error. A command the cluster did not take (redirected, its master
away or failing) is sent again by itself through the cluster client, which reads the slot map again.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    DataError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)

from delivery.script_call import run_async

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

    @property
    def alone_is_whole(self) -> bool:
        """Sent by itself, this call is one plain redis-py call (a script's, or one command's)."""
        return self.script is not None or self.single

    def wire(self) -> Sequence[Sequence[Any]]:
        """The commands this call sends."""
        if self.script is not None:
            # EVALSHA as a plain command: a Script in a pipeline makes redis-py ask SCRIPT EXISTS on every trip.
            return (("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args),)
        return self.commands

    def queue_on(self, pipe: Any) -> None:
        for command in self.wire():
            pipe.execute_command(*command)


class ScriptBatcher:
    """Gathers the Redis calls of one event-loop turn and sends them in one pipeline (one per master on a cluster)."""

    def __init__(self, redis: aioredis.Redis | RedisCluster) -> None:
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
        """Plain commands run in this order in one trip (on a cluster, in this order on each slot); their replies. The
        first that failed raises."""
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
        if len(batch) == 1 and batch[0].alone_is_whole:
            await self._alone(batch[0])
        elif isinstance(self._redis, RedisCluster):
            await _ClusterTrip(self, self._redis, batch).send()
        else:
            await self._trip(batch)

    async def _trip(self, batch: list[_Item]) -> None:
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
            _fail(batch, exc)
            return
        except BaseException:  # cancelled (the worker stops): the callers' own awaits end with it
            _cancel(batch)
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
        """A Lua step or a single command by itself, through the client (which follows the slot to its master); a
        forgotten script is sent whole to that node (see :mod:`delivery.script_call`)."""
        if item.script is not None:
            await _settle(item.future, run_async(self._redis, item.script, item.keys, item.args))
        else:
            await _settle(item.future, self._redis.execute_command(*item.commands[0]))


def _fail(batch: Sequence[_Item], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)


def _cancel(batch: Sequence[_Item]) -> None:
    for item in batch:
        item.future.cancel()


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


class _ClusterTrip:
    """A turn's calls on a Redis Cluster: each command goes to the master of its slot, one pipeline per master, all
    sent side by side.

    redis-py's own cluster pipeline is not used for this: when one node cannot be reached it closes every node's
    connections (the replies other nodes are sending are lost) and sends again, after 0.25 s, each command whose
    reply was falsy (a script that answered 0 or nil runs twice). Here each node's part goes out through the node's
    own pipeline call (the one redis-py's cluster pipeline makes for each node), and a command the cluster did not
    take (a redirection, a node away, the cluster down) is sent again by itself through redis-py's cluster client,
    which reads the slot map again and retries as it does for any command.
    """

    def __init__(self, batcher: ScriptBatcher, cluster: RedisCluster, batch: list[_Item]) -> None:
        self._batcher = batcher
        self._cluster = cluster
        self._batch = batch
        self._replies: dict[int, list[Any]] = {id(item): [None] * item.size for item in batch}

    async def send(self) -> None:
        try:
            await self._send()
        except Exception as exc:  # noqa: BLE001 (no node answers: every caller's error, as it would be alone)
            _fail(self._batch, exc)
        except BaseException:  # cancelled (the worker stops): the callers' own awaits end with it
            _cancel(self._batch)
            raise

    async def _send(self) -> None:
        await self._cluster.initialize()  # reads the slot map the first time (and after a fault); a no-op otherwise
        parts: dict[str, tuple[ClusterNode, list[tuple[_Item, int, Sequence[Any]]]]] = {}
        for item in self._batch:
            try:
                routes = [(await self._node_of(command), index, command) for index, command in enumerate(item.wire())]
            except (RedisError, RedisClusterException):
                # Not routed here (keys of several slots, no key, a slot without a known master): the call goes by
                # itself through redis-py, which routes it or says why not.
                self._replies[id(item)] = [_NOT_SENT] * item.size
                continue
            for node, index, command in routes:
                parts.setdefault(node.name, (node, []))[1].append((item, index, command))
        await asyncio.gather(*(self._node_trip(node, part) for node, part in parts.values()))
        await asyncio.gather(*(self._settle(item) for item in self._batch))

    async def _node_of(self, command: Sequence[Any]) -> ClusterNode:
        """The master of the command's slot, found as redis-py's cluster client finds it.

        Raises:
            RedisClusterException: keys of several slots, no key, or no known master of the slot.
            RedisError: redis-py does not know the command.
        """
        cluster = self._cluster
        name = command[0]
        keys: Sequence[Any]
        if isinstance(name, str) and name.upper() in ("EVAL", "EVALSHA"):
            keys = command[3 : 3 + int(command[2])]
        elif name in cluster.command_flags:
            raise RedisClusterException(f"{name} is routed by a node flag, not by a key")
        else:
            keys = await cluster.commands_parser.get_keys(*command) or ()
        slots = {cluster.keyslot(key) for key in keys}
        if len(slots) != 1:
            raise RedisClusterException(
                f"{name} - all keys must map to the same key slot" if slots else f"{name} names no key"
            )
        slot = slots.pop()
        try:
            return cluster.nodes_manager.get_node_from_slot(slot)
        except KeyError:  # a slot map without that slot (read while the cluster was failing)
            raise SlotNotCoveredError(f"slot {slot} has no known master") from None

    async def _node_trip(self, node: ClusterNode, part: list[tuple[_Item, int, Sequence[Any]]]) -> None:
        commands = [PipelineCommand(position, *command) for position, (_, _, command) in enumerate(part)]
        try:
            await node.execute_pipeline(commands)
        except DataError as exc:  # an argument Redis cannot take: nothing went to this node; each call alone
            items = list({id(item): item for item, _, _ in part}.values())
            if len(items) == 1:
                for item, index, _ in part:
                    self._replies[id(item)][index] = exc
            else:
                await asyncio.gather(*(self._node_trip(node, [p for p in part if p[0] is item]) for item in items))
            return
        except Exception as exc:  # noqa: BLE001 (the node could not be reached: each call sent again by itself)
            for item, index, _ in part:
                self._replies[id(item)][index] = exc
            return
        for (item, index, _), command in zip(part, commands, strict=True):
            self._replies[id(item)][index] = command.result

    async def _settle(self, item: _Item) -> None:
        """Answer a call from its replies, after sending again by itself what the cluster did not take."""
        if item.future.done():
            return
        replies = self._replies[id(item)]
        if item.alone_is_whole:
            if isinstance(replies[0], NoScriptError) or self._not_taken(replies[0]):
                await self._batcher._alone(item)  # loads a forgotten script; follows the slot to its master
            else:
                _answer(item, replies)
            return
        for index, reply in enumerate(replies):
            if self._not_taken(reply):  # one by one, in the order given, after what the node took
                try:
                    replies[index] = await self._cluster.execute_command(*item.commands[index])
                except Exception as exc:  # noqa: BLE001 (the caller's reply)
                    replies[index] = exc
        if not item.future.done():
            _answer(item, replies)

    def _not_taken(self, reply: Any) -> bool:
        """Not sent, or a reply that says the command did not run where it was sent: redirected, or the node away or
        failing."""
        return (
            reply is _NOT_SENT
            or isinstance(reply, (AskError, TryAgainError))
            or type(reply) in type(self._cluster).ERRORS_ALLOW_RETRY
        )


_NOT_SENT = object()  # a command of a call the cluster trip did not route


_batchers: weakref.WeakKeyDictionary[aioredis.Redis | RedisCluster, ScriptBatcher] = weakref.WeakKeyDictionary()


def batched(redis: aioredis.Redis | RedisCluster) -> ScriptBatcher:
    """The batcher of ``redis`` (one per client, so that every store on that client shares its trips)."""
    batcher = _batchers.get(redis)
    if batcher is None:
        batcher = _batchers[redis] = ScriptBatcher(redis)
    return batcher
