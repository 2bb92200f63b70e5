"""A check that every Lua step keeps to one slot: the keys it is given and every key it touches.

Redis 7 refuses, in cluster mode, a script that declares flags (a ``#!lua`` first line) and touches keys of more
than one slot, whether given or built inside the script, whichever node holds them. Relay's scripts carry no such
line (it would change how a full Redis treats them, and Redis 6 has none); here each one gets it, and runs on a
cluster of one node (all slots on one node: no redirects, so the plain client works), over a store cut into
several partitions. ``allow-oom`` keeps a full Redis's treatment of a step as it is without the line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from delivery import keys
from service.processes import RedisServer

SHEBANG = "#!lua flags=allow-oom\n"


class ClusterNode(RedisServer):
    """A redis-server in cluster mode that holds every slot itself."""

    def argv(self) -> list[str]:
        return [
            *super().argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str((self.dir / "nodes.conf").resolve()),
        ]

    def start(self) -> None:
        super().start()
        client = self.client()
        try:
            if int(client.cluster("info").get("cluster_slots_assigned", 0)) == 0:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 10
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster did not come up")
                time.sleep(0.05)
        finally:
            client.close()


@contextmanager
def checked_scripts(partitions: int) -> Iterator[None]:
    """Register every script with the flags line, on a layout of ``partitions``."""
    originals: list[tuple[Any, Any]] = []

    def mark(register: Any) -> Any:
        def register_checked(self: Any, script: str | bytes) -> Any:
            text = script.decode() if isinstance(script, bytes) else script
            return register(self, text if text.startswith("#!") else SHEBANG + text)

        return register_checked

    for cls in (aioredis.Redis, redis.Redis, aiocluster.RedisCluster):
        originals.append((cls, cls.register_script))
        cls.register_script = mark(cls.register_script)  # type: ignore[method-assign]
    old = keys.use(keys.Layout.of(partitions))
    try:
        yield
    finally:
        keys.use(old)
        for cls, original in originals:
            cls.register_script = original
