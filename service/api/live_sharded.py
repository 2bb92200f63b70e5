"""Live events on a Redis Cluster: sharded pub/sub, subscribed only for the tasks this API node's followers follow.

A worker's step publishes a task's event on the task's own channel (``SPUBLISH``), which lives in the task's slot:
only the master of that slot passes it on, and only to the nodes that subscribed to that channel. So an API node
receives the events of the tasks its sockets and streams follow, not every event of the cluster.

Each master this node listens to has a connection of its own, read by a task of its own (redis-py's
``get_sharded_message`` polls the nodes in turn: an event on the last would wait behind the others' timeouts). When a
node's connection drops, or the cluster tells a subscriber that its channel's slot moved (an unasked
``sunsubscribe``), the channels are subscribed again where the slot map says, and their followers read what they
missed from the task's log (``resync``): a failover or a resharding costs a catch-up, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from delivery import background
from delivery.redis_client import as_text, node_url

log = logging.getLogger("relay.live")

# How long to wait before subscribing again after a node's connection dropped (the cluster may be failing over).
REROUTE_DELAY_S = 0.5
REROUTE_MAX_DELAY_S = 4.0


class _NodeReader:
    """One master's pub/sub connection and the task that reads it."""

    def __init__(self, name: str, client: aioredis.Redis) -> None:
        self.name = name
        self.client = client
        self.pubsub = client.pubsub()
        self.channels: set[str] = set()
        self.task: asyncio.Task[None] | None = None


class ShardedListener:
    def __init__(
        self,
        cluster: RedisCluster,
        *,
        connect_node: Callable[[str, int], aioredis.Redis],
        dispatch: Callable[[bytes, bytes], None],
        resync: Callable[[Iterable[bytes]], None],
    ) -> None:
        self._cluster = cluster
        self._connect_node = connect_node
        self._dispatch = dispatch
        self._resync = resync
        self._readers: dict[str, _NodeReader] = {}
        self._where: dict[str, str] = {}  # channel -> the node it is subscribed on
        self._lock = asyncio.Lock()
        self._rerouting: asyncio.Task[None] | None = None
        self._pending: set[str] = set()  # channels to subscribe again
        self.received = 0  # events received, for the node's figures

    @property
    def channels(self) -> int:
        return len(self._where)

    async def subscribe(self, channel: str) -> None:
        """Listen to ``channel`` (returns once the node has the subscription)."""
        async with self._lock:
            if channel in self._where:
                return
            await self._subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            name = self._where.pop(channel, None)
            reader = self._readers.get(name) if name else None
            if reader is None:
                return
            reader.channels.discard(channel)
            with contextlib.suppress(RedisError, OSError):
                await reader.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        await background.stop(self._rerouting)
        for reader in list(self._readers.values()):
            await self._close(reader)
        self._readers.clear()
        self._where.clear()

    async def _subscribe(self, channel: str) -> None:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise RedisError(f"no master serves the slot of {channel}")
        reader = self._readers.get(node.name)
        if reader is None:
            reader = self._readers[node.name] = _NodeReader(node.name, self._connect_node(node.host, int(node.port)))
        await reader.pubsub.ssubscribe(channel)
        reader.channels.add(channel)
        self._where[channel] = node.name
        if reader.task is None or reader.task.done():
            reader.task = asyncio.create_task(self._read(reader), name=f"relay-live-{node.name}")

    async def _read(self, reader: _NodeReader) -> None:
        try:
            while reader.channels:
                message = await reader.pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    self.received += 1
                    self._dispatch(message["channel"], message["data"])
                elif kind == "sunsubscribe":
                    channel = as_text(message["channel"])
                    if self._where.get(channel) == reader.name:
                        # Not asked for: the slot moved to another master (resharding, a failover).
                        self._where.pop(channel, None)
                        reader.channels.discard(channel)
                        self._reroute([channel])
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("live events from %s lost (%s); subscribing again where the slots are", reader.name, exc)
            lost = [c for c, name in self._where.items() if name == reader.name]
            for channel in lost:
                self._where.pop(channel, None)
            self._readers.pop(reader.name, None)
            await self._close(reader, stop=False)
            self._reroute(lost)
        except Exception:
            log.exception("reading live events from %s failed", reader.name)
            raise

    def _reroute(self, channels: Iterable[str]) -> None:
        self._pending.update(channels)
        if self._rerouting is None or self._rerouting.done():
            self._rerouting = asyncio.create_task(self._reroute_pending(), name="relay-live-reroute")

    async def _reroute_pending(self) -> None:
        delay_s = REROUTE_DELAY_S
        while self._pending:
            await asyncio.sleep(delay_s)
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.nodes_manager.initialize()  # the slot map as it is now
            channels, self._pending = self._pending, set()
            failed: list[str] = []
            async with self._lock:
                for channel in channels:
                    if channel in self._where:
                        continue
                    try:
                        await self._subscribe(channel)
                    except (RedisError, OSError):
                        failed.append(channel)
            done = [c for c in channels if c not in failed]
            if done:
                # What was published while the channel was not listened to: read from the log.
                self._resync([c.encode() for c in done])
            if failed:
                self._pending.update(failed)
                delay_s = min(REROUTE_MAX_DELAY_S, delay_s * 2)

    async def _close(self, reader: _NodeReader, *, stop: bool = True) -> None:
        if stop and reader.task is not None and reader.task is not asyncio.current_task():
            await background.stop(reader.task)
        with contextlib.suppress(Exception):
            await reader.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await reader.client.aclose()


def node_client(url: str) -> Callable[[str, int], aioredis.Redis]:
    """Connections to a cluster's nodes with the credentials of its first seed (pub/sub: no command timeout)."""

    def connect(host: str, port: int) -> aioredis.Redis:
        return aioredis.Redis.from_url(node_url(url, f"{host}:{port}"), socket_connect_timeout=5)

    return connect
