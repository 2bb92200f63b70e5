"""A step whose answer waits until a replica has it: Redis replicates asynchronously, so a master that fails over
to its replica loses what it acknowledged but had not yet sent on. A submission answered 202 must survive that.

The step and a ``WAIT`` go to the master of the step's slot on one connection (``WAIT`` counts the writes of its own
connection): the answer comes once one replica acknowledged everything the step wrote, or the step fails with
:class:`NotReplicated` when none did in :data:`WAIT_MS` (the write may still be on the master alone: a client
retries with its Idempotency-Key). A master without replicas answers at once, as a standalone Redis does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterDownError, NoScriptError, RedisError

from delivery.script_call import run_async

# How long a submission waits for a replica before it is answered 503.
WAIT_MS = 2000
# WAIT ends this long before the connection's read would time out: an empty WAIT must be read as one, not as a stall.
WAIT_MARGIN_MS = 500


class NotReplicated(ClusterDownError):
    """No replica acknowledged the step in time (its master may have lost every replica): nothing is promised."""


class ReplicatedStep:
    def __init__(self, cluster: RedisCluster, *, wait_ms: int = WAIT_MS) -> None:
        self._cluster = cluster
        self._wait_ms = wait_ms

    def wait_ms_on(self, node: Any) -> int:
        """How long ``WAIT`` waits on ``node``: :attr:`wait_ms`, ended before the connection's read times out."""
        timeout_s = node.connection_kwargs.get("socket_timeout")
        if timeout_s is None:
            return self._wait_ms
        return max(1, min(self._wait_ms, int(timeout_s * 1000) - WAIT_MARGIN_MS))

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        node = self._cluster.get_node_from_key(keys[0])
        if node is None:
            return await run_async(self._cluster, script, keys, args)
        replicas = len(self._cluster.nodes_manager.slots_cache.get(self._cluster.keyslot(keys[0]), [])) - 1
        if replicas <= 0:
            return await run_async(self._cluster, script, keys, args)
        reply, acked = await self._with_wait(node, script, keys, args)
        if isinstance(reply, NoScriptError):  # the node restarted and forgot it: load it there (only), then once more
            await self._cluster.execute_command("SCRIPT LOAD", script.script, target_nodes=node)
            reply, acked = await self._with_wait(node, script, keys, args)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < 1:
            raise NotReplicated(f"no replica of {node.name} acknowledged the write in {self.wait_ms_on(node)} ms")
        return reply

    async def _with_wait(
        self, node: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> tuple[Any, Any]:
        commands = [
            PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
            PipelineCommand(1, "WAIT", 1, self.wait_ms_on(node)),
        ]
        try:
            await node.execute_pipeline(commands)
        except (RedisError, OSError) as exc:
            return exc, exc
        return commands[0].result, commands[1].result
