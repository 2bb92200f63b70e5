"""A check that every Lua step keeps to one slot: the keys it is given and every key it touches.

Redis 7 refuses, in cluster mode, a script that declares flags (a ``#!lua`` first line) and touches keys of more
than one slot, whether given or built inside the script, whichever node holds them. Relay's scripts carry no such
line (it would change how a full Redis treats them, and Redis 6 has none); here each one gets it, and runs on a
cluster of one node (all slots on one node: no redirects, so the plain client works), over a store cut into
several partitions. ``allow-oom`` lets every step start on a full Redis, as it does without the line (without the
flag, a flagged step is refused whole there, a renewal too); but it also lets a step's first write through, where a
step without the line has that write refused. The tests of a full store are therefore standalone-only.

The scripts that run are noted (their sha1, as they answer), so that the run can tell which Lua file no test ran.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.client as aioclient
import redis.asyncio.cluster as aiocluster
import redis.client

from delivery import keys
from service.processes import RedisServer, free_port

SHEBANG = "#!lua flags=allow-oom\n"


class ClusterNode(RedisServer):
    """A redis-server in cluster mode that holds every slot itself."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Its cluster bus port, named: by default it is the port + 10,000, and a node refuses to start on a port
        # above 55,535 (which the OS picks about one time in five).
        self.bus_port = free_port()

    def argv(self) -> list[str]:
        return [
            *super().argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str((self.dir / "nodes.conf").resolve()),
            "--cluster-port",
            str(self.bus_port),
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


# Every script registered in this process (its sha1 -> the flagged text), and the sha1s of those that answered.
REGISTERED: dict[str, str] = {}
RAN: set[str] = set()
# The Lua files that need not run in the slot-checked tests: the Redis broker's enqueue and batched ack in the
# storage Redis (a cluster needs a broker of its own, by design).
NOT_RUN_HERE = frozenset({"service/enqueue.lua", "service/ack_many.lua"})


def _note(commands: Iterable[Sequence[Any]], replies: Iterable[Any]) -> None:
    """Note the scripts among ``commands`` whose replies are answers, not errors."""
    for args, reply in zip(commands, replies, strict=False):
        if args and str(args[0]).upper() == "EVALSHA" and not isinstance(reply, Exception):
            sha = args[1]
            RAN.add(sha.decode() if isinstance(sha, bytes) else str(sha))


def _noting_command(execute: Any, *, is_async: bool) -> Any:
    if is_async:

        async def execute_async(self: Any, *args: Any, **options: Any) -> Any:
            reply = await execute(self, *args, **options)
            _note([args], [reply])
            return reply

        return execute_async

    def execute_sync(self: Any, *args: Any, **options: Any) -> Any:
        reply = execute(self, *args, **options)
        _note([args], [reply])
        return reply

    return execute_sync


def _noting_pipeline(execute: Any, *, is_async: bool) -> Any:
    if is_async:

        async def execute_async(self: Any, *args: Any, **options: Any) -> Any:
            stack = [command for command, _ in self.command_stack]
            replies = await execute(self, *args, **options)
            _note(stack, replies)
            return replies

        return execute_async

    def execute_sync(self: Any, *args: Any, **options: Any) -> Any:
        stack = [command for command, _ in self.command_stack]
        replies = execute(self, *args, **options)
        _note(stack, replies)
        return replies

    return execute_sync


@contextmanager
def checked_scripts(partitions: int) -> Iterator[None]:
    """Register every script with the flags line, on a layout of ``partitions``; note the scripts that run."""
    originals: list[tuple[Any, str, Any]] = []

    def mark(register: Any) -> Any:
        def register_checked(self: Any, script: str | bytes) -> Any:
            text = script.decode() if isinstance(script, bytes) else script
            flagged = text if text.startswith("#!") else SHEBANG + text
            registered = register(self, flagged)
            REGISTERED[registered.sha] = flagged
            return registered

        return register_checked

    def patch(cls: Any, name: str, new: Any) -> None:
        originals.append((cls, name, getattr(cls, name)))
        setattr(cls, name, new)

    for cls in (aioredis.Redis, redis.Redis, aiocluster.RedisCluster):
        patch(cls, "register_script", mark(cls.register_script))
    for module, is_async in ((aioclient, True), (redis.client, False)):
        patch(module.Redis, "execute_command", _noting_command(module.Redis.execute_command, is_async=is_async))
        patch(module.Pipeline, "execute", _noting_pipeline(module.Pipeline.execute, is_async=is_async))
    old = keys.use(keys.Layout.of(partitions))
    try:
        yield
    finally:
        keys.use(old)
        for cls, name, original in reversed(originals):
            setattr(cls, name, original)


def lua_files(root: Path) -> list[str]:
    """The repository's Lua files (as ``git ls-files`` names them; found on disk where there is no git)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.lua"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [
            str(path.relative_to(root))
            for path in root.rglob("*.lua")
            if not any(part.startswith(".") for part in path.relative_to(root).parts)
        ]
    return sorted(listed)


def ran_files(root: Path) -> set[str]:
    """The Lua files that ran in this process: those whose text is part of a script that answered (a file of
    shared functions runs with each script built on it)."""
    texts = [REGISTERED[sha] for sha in RAN if sha in REGISTERED]
    found = set()
    for name in lua_files(root):
        body = (root / name).read_text().strip()
        if any(body in text for text in texts):
            found.add(name)
    return found


def never_run(root: Path, ran: Iterable[str]) -> list[str]:
    """The Lua files of the repository that no test ran (but those that need not run here)."""
    return [name for name in lua_files(root) if name not in NOT_RUN_HERE and name not in set(ran)]
