"""Redis connections, made the same way everywhere: one Redis, or a Redis Cluster named by its seed nodes.

redis-py 8 defaults to a 5 s socket timeout, which breaks blocking reads and, on Python 3.11, can swallow
task cancellation; Relay turns it off and bounds its own blocking calls instead.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, cast, overload
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot as _crc_key_slot
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry

__all__ = ["as_text", "connect", "connect_sync", "key_slot", "parse_seeds"]

# Connections one process may open; the API and the engine pipeline their commands, so few are needed. On a cluster
# the bound is per node.
DEFAULT_MAX_CONNECTIONS = 64
# A command waits this long for a free connection when all are busy (a burst of subscribes after a restart).
POOL_WAIT_S = 10.0
# Without a command timeout, connecting still gives up after this long.
DEFAULT_CONNECT_TIMEOUT_S = 5.0


def as_text(value: bytes | str) -> str:
    """A reply that may come back as bytes (the clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (its hash tag's, when it has one), as the server computes it."""
    return _crc_key_slot(key.encode() if isinstance(key, str) else key)


def parse_seeds(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster URL, ``redis://h1:p1,redis://h2:p2`` (every seed with the same scheme, user,
    password and options; no database but 0).

    Raises:
        ValueError: no seed, a seed without a host, a unix socket, a database other than 0, or seeds that differ in
            more than their address. The message never repeats the URL (it may hold a password).
    """
    return _parse_cluster_url(url)[0]


@overload
def connect(
    url: str,
    *,
    cluster: Literal[False] = False,
    max_connections: int = ...,
    command_timeout_s: float | None = ...,
    pool_wait_s: float = ...,
    retries: int = ...,
) -> aioredis.Redis: ...


@overload
def connect(
    url: str,
    *,
    cluster: Literal[True],
    max_connections: int = ...,
    command_timeout_s: float | None = ...,
    pool_wait_s: float = ...,
    retries: int = ...,
) -> aiocluster.RedisCluster: ...


def connect(
    url: str,
    *,
    cluster: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    command_timeout_s: float | None = None,
    pool_wait_s: float = POOL_WAIT_S,
    retries: int = 3,
) -> aioredis.Redis | aiocluster.RedisCluster:
    """A client with its own pool: :class:`redis.asyncio.Redis`, or with ``cluster`` a
    :class:`redis.asyncio.cluster.RedisCluster` whose ``url`` lists seed nodes (``redis://h1:p1,redis://h2:p2``).

    ``command_timeout_s`` bounds each command (a stalled Redis then raises ``TimeoutError`` instead of hanging):
    right for request handlers, which answer 503 rather than wait; wrong for blocking reads such as pub/sub.
    ``retries``: connection errors retried on a fresh connection. A pub/sub listener takes 0, so that a drop
    reaches it (redis-py would otherwise reconnect and subscribe again inside ``listen()``, and what was
    published in the gap would pass unnoticed).

    On a cluster, ``max_connections`` bounds each node's pool and a command past it fails at once with
    ``MaxConnectionsError`` (redis-py's cluster pool does not wait; ``pool_wait_s`` does not apply). ``retries``
    then counts what the cluster client retries after reading the slot map again: connection errors, ``CLUSTERDOWN``
    and a slot no master serves. A timeout is not retried, as on a single Redis, but the next command reads the
    slot map again. Redirections (``MOVED``, ``ASK``) and ``TRYAGAIN`` are followed up to 16 times whatever
    ``retries`` says.
    """
    if cluster:
        return _connect_cluster(
            url, max_connections=max_connections, command_timeout_s=command_timeout_s, retries=retries
        )
    # A blocking pool: past max_connections a command waits for a connection instead of failing with
    # "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=command_timeout_s or 5,
        health_check_interval=30,
        # from_url leaves redis-py with no retries: after a Redis restart every pooled connection would fail
        # its next command. Reconnect and retry connection errors a few times instead; a timeout is not
        # retried (a stalled Redis would only make the caller wait longer).
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(RedisConnectionError,)),
    )
    pool.connection_class = _quick_packing(pool.connection_class)  # type: ignore[arg-type]
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def _connect_cluster(
    url: str, *, max_connections: int, command_timeout_s: float | None, retries: int
) -> aiocluster.RedisCluster:
    seeds, options = _parse_cluster_url(url)
    client = _Cluster(
        startup_nodes=[aiocluster.ClusterNode(host, port) for host, port in seeds],
        max_connections=max_connections,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=command_timeout_s or DEFAULT_CONNECT_TIMEOUT_S,
        health_check_interval=30,
        # Only the count is read (redis-py 8.1): the cluster client retries at once after a connection error, and
        # 0.25 s after CLUSTERDOWN. Its connections themselves never retry.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        # A master down with no replica to take its place leaves its slots without one: the other masters' slots go
        # on answering (redis-py's default refuses every command until every slot is served again).
        require_full_coverage=False,
        **options,
    )
    _use_quick_packing(client)
    return client


# What the cluster clients retry, after reading the slot map again. redis-py retries a timeout too; Relay does not,
# as on a single Redis (a stalled node would only make the caller wait longer), and the next command reads the slot
# map again all the same.
_CLUSTER_RETRIED = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)


class _Cluster(aiocluster.RedisCluster):
    """redis-py's asyncio cluster client, without retries of a timeout, and whose "no master serves this slot" is a
    RedisError (a ClusterDownError) as every other failure of the storage is, so that callers answer it alike."""

    ERRORS_ALLOW_RETRY = _CLUSTER_RETRIED  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # redis-py reads the command table (COMMAND) from the "default" node each time it reads the slot map again,
        # and the default node is the first master the map lists: a master that is down with no replica to take
        # its place stays in the map, and every command of the client failed then, whatever its slot. The table
        # does not change: read it once, from any node that answers.
        parser = self.commands_parser
        read_table = parser.initialize

        async def initialize(node: Any = None) -> None:
            if parser.commands:
                return
            candidates = [node] if node is not None else []
            candidates += [n for n in self.nodes_manager.nodes_cache.values() if n is not node]
            failure: Exception | None = None
            for candidate in candidates:
                try:
                    await read_table(candidate)
                    return
                except (RedisError, OSError) as exc:
                    failure = exc
            if failure is not None:
                raise failure

        parser.initialize = initialize  # type: ignore[method-assign]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterDownError(f"CLUSTERDOWN {exc}") from exc
        except RedisClusterException as exc:
            if "cannot be connected" in str(exc):  # no node of the cluster answers
                raise RedisConnectionError(str(exc)) from exc
            raise  # a command the cluster cannot route (keys of several slots): a bug, said as it is


class _SyncCluster(redis.cluster.RedisCluster):
    """redis-py's cluster client, without retries of a timeout."""

    ERRORS_ALLOW_RETRY = _CLUSTER_RETRIED  # type: ignore[assignment]


def _use_quick_packing(client: aiocluster.RedisCluster) -> None:
    """Every node's connections pack as :class:`_QuickPack` does.

    RedisCluster takes no connection class: it keeps one in the connection kwargs it shares with the nodes it finds
    later, and each seed node made in its constructor holds its own. A test checks the connections it ends up with.
    """
    quick = _quick_packing(client.connection_kwargs["connection_class"])
    client.connection_kwargs["connection_class"] = quick
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = quick


def connect_sync(
    url: str, *, cluster: bool = False, command_timeout_s: float | None = None, retries: int = 3
) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous client (for tools and scripts), made as :func:`connect` makes its asyncio ones."""
    connect_timeout_s = command_timeout_s or DEFAULT_CONNECT_TIMEOUT_S
    if not cluster:
        return redis.Redis.from_url(
            url,
            socket_timeout=command_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=30,
            retry=SyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(RedisConnectionError,)),
        )
    seeds, options = _parse_cluster_url(url)
    return _SyncCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in seeds],  # type: ignore[no-untyped-call]
        socket_timeout=command_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
        retry=SyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        **options,
    )


def _parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seeds' addresses, and the client options they share (credentials, TLS, query options)."""
    seeds: list[tuple[str, int]] = []
    shared: dict[str, Any] | None = None
    for number, text in enumerate(url.split(","), 1):
        if not text:
            raise ValueError(f"seed {number} of the cluster URL is empty")
        if text.startswith("unix:"):
            raise ValueError(f"seed {number} of the cluster URL is a unix socket; cluster nodes are reached over TCP")
        try:
            options: dict[str, Any] = dict(parse_url(text))
        except ValueError as exc:
            raise ValueError(f"seed {number} of the cluster URL: {exc}") from None
        if not options.get("host"):
            raise ValueError(f"seed {number} of the cluster URL has no host")
        if options.pop("db", 0) != 0:
            raise ValueError(f"seed {number} of the cluster URL names a database; a cluster has only database 0")
        seeds.append((options.pop("host"), options.pop("port", 6379)))
        # The cluster clients take ssl=True, not the connection class a rediss:// URL names.
        options["ssl"] = options.pop("connection_class", None) is not None
        if shared is None:
            shared = options
        elif options != shared:
            raise ValueError(f"seed {number} of the cluster URL differs from the first in more than its address")
    assert shared is not None
    return seeds, shared


class _QuickPack:
    """Packs a command the way redis-py does, in one pass (redis-py's packer is the larger part of a command's
    client-side cost here: py-spy put it at 9 % of a worker's CPU, for Lua steps of 20 to 40 arguments).

    Same bytes on the wire (a test compares them); values of any other type go to redis-py's encoder, which
    refuses what it refuses.
    """

    encoder: Any

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """As redis-py sends, but a write on a transport closed under the connection (uvloop raises RuntimeError
        when a timeout closed it: seen with a master frozen past the command timeout) is the connection error it is,
        which callers answer (503, a retry) rather than a bug (500). redis-py has dropped the connection already."""
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (RuntimeError, AttributeError) as exc:  # AttributeError: its writer already gone (None)
            raise RedisConnectionError(f"the connection was closed under a write ({exc})") from exc

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        parts = [b"*%d\r\n" % len(args)]
        encode = self.encoder.encode
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                value = arg
            elif kind is str:
                value = arg.encode(self.encoder.encoding, self.encoder.encoding_errors)
            elif kind is int or kind is float:
                value = repr(arg).encode()
            else:
                value = bytes(encode(arg))
            parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
        return [b"".join(parts)]


@functools.cache
def _quick_packing(connection_class: type[Any]) -> type[Any]:
    return type(f"Quick{connection_class.__name__}", (_QuickPack, connection_class), {})


def connect_storage(
    url: str, *, cluster: bool, command_timeout_s: float | None = None, pool_wait_s: float = POOL_WAIT_S
) -> aioredis.Redis:
    """Relay's storage: one Redis, or a Redis Cluster from its seed nodes. Typed as the standalone client: the
    cluster client answers every command Relay sends its storage (each step touches one slot; see delivery.keys)."""
    if cluster:
        return cast(
            aioredis.Redis, connect(url, cluster=True, command_timeout_s=command_timeout_s, pool_wait_s=pool_wait_s)
        )
    return connect(url, command_timeout_s=command_timeout_s, pool_wait_s=pool_wait_s)


def node_url(url: str, address: str) -> str:
    """The URL of one node of a cluster (``host:port``), with the scheme and credentials of ``url``'s first seed."""
    first = urlsplit(url.split(",")[0].strip())
    userinfo = first.netloc.rpartition("@")[0]
    return urlunsplit((first.scheme, f"{userinfo}@{address}" if userinfo else address, "", "", ""))


def address_of(url: str) -> str:
    """``host:port`` of a Redis URL (a cluster's first seed), or a unix socket's path; never its credentials."""
    parts = urlsplit(url.split(",")[0].strip())
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def listen_url(url: str) -> str:
    """The storage's URL, or a cluster's first seed (a client of one node)."""
    return url.split(",")[0].strip()
