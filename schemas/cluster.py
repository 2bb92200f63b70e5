"""The operator's view of the storage and the processes around it: ``GET /v1/ops/cluster``."""

from __future__ import annotations

from typing import Literal

import msgspec


class StorageNode(msgspec.Struct, kw_only=True):
    address: str  # host:port
    role: Literal["master", "replica"]
    up: bool  # answered just now
    master: str | None = None  # a replica's master (host:port)
    slots: int  # slots held (16384 on a standalone Redis)
    partitions: int  # partitions of Relay's keyspace whose slot it holds (a replica: none)
    keys: int | None = None
    memory_bytes: int | None = None
    commands_per_s: int | None = None
    owed_tasks: int | None = 0  # accepted tasks not ended, in its partitions (None: a partition did not answer)
    owed_webhooks: int | None = 0  # webhooks owed to destinations of its partitions, in flight included


class ClusterView(msgspec.Struct, kw_only=True):
    mode: Literal["standalone", "cluster"]
    partitions: int  # of Relay's keyspace, fixed when the store was made
    nodes: list[StorageNode]
    # ids of the worker processes alive (heartbeat in the last few seconds); None: not known, the master holding
    # the heartbeats does not answer
    workers: list[str] | None
    api_nodes: list[str] | None  # ids of the API processes alive; None: not known
