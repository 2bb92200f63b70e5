"""A Lua step run on the node of its keys, and sent whole to that node when it has forgotten the step.

redis-py's ``Script`` answers ``NOSCRIPT`` (a restart, a ``SCRIPT FLUSH``) with ``SCRIPT LOAD``, which a cluster
client sends to every master: while any master is down that load fails, and so does every step not yet loaded, even
one whose keys live on a master that is up. Here ``EVALSHA`` goes to the node of the step's keys, and on ``NOSCRIPT``
an ``EVAL`` of the step's text goes to that same node, which keeps the script for the next ``EVALSHA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

__all__ = ["AsyncStepCall", "StepCall", "run_async"]


async def run_async(redis: Any, script: AsyncScript | Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """``script`` with ``keys`` and ``args`` on ``redis`` (an asyncio client, plain or cluster)."""
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await redis.eval(script.script, len(keys), *keys, *args)


class AsyncStepCall:
    """A step bound to an asyncio client, called as redis-py's ``AsyncScript`` is: ``await step(keys=, args=)``."""

    def __init__(self, redis: Any, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self.sha = script.sha

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        return await run_async(client or self.redis, self.script, keys, args)


class StepCall:
    """A step bound to a synchronous client, called as redis-py's ``Script`` is: ``step(keys=, args=)``."""

    def __init__(self, redis: Any, script: Script) -> None:
        self.redis = redis
        self.script = script
        self.sha = script.sha

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        redis = client or self.redis
        try:
            return redis.evalsha(self.script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return redis.eval(self.script.script, len(keys), *keys, *args)
