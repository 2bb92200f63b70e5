"""Several hosts on one machine: network namespaces joined by a bridge, for tests of Relay across hosts.

:class:`Hosts` makes one network namespace per host, a bridge in the root namespace holding the first address of a
private /24 that nothing on the machine uses, and a veth pair per host (one end a port of the bridge, the other in
the host's namespace with the host's address). Every host reaches the root namespace (and the others) through the
bridge; a process runs on a host under ``ip netns exec``. :meth:`Hosts.link_down` sets a host's bridge port down, as
a pulled cable does: the host keeps its address and its sockets, and nothing passes until :meth:`Hosts.link_up`.

Names carry a suffix of this run's own, so that runs side by side never meet; whatever was made is deleted again
(namespaces, veths, bridge) when the ``with`` block ends, however it ends. Needs root and ``ip`` from iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

# How long one ``ip`` command may take.
IP_TIMEOUT_S = 10.0
# How long the processes left in a namespace at teardown may take to exit once killed.
EXIT_TIMEOUT_S = 10.0


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, or the kernel refuses)."""


@dataclass(frozen=True, slots=True)
class Host:
    """One host: its namespace, its address on the bridge, and the two ends of its link."""

    name: str  # as the test calls it: "h1"
    netns: str  # the namespace's name
    address: str  # its address on the bridge's /24
    port_link: str  # the end in the root namespace, a port of the bridge
    inner_link: str  # the end inside the namespace

    @property
    def prefix(self) -> list[str]:
        """What goes before a command to run it on this host."""
        return ["ip", "netns", "exec", self.netns]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip args...``; raises ``HostsUnavailable`` with what ``ip`` said when it fails and ``check`` is set."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise HostsUnavailable(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can (checked by making and deleting one)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) on PATH"
    probe = f"rlt-probe-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", probe)
    except (HostsUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` fails here: {exc}"
    ip("netns", "delete", probe, check=False)
    return None


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an address or a route of the root namespace is in."""
    found: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    for line in ip("-4", "route", "show", "table", "all").stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in ("local", "broadcast", "unicast", "unreachable", "blackhole", "prohibit"):
            fields = fields[1:]
        if fields and fields[0] != "default":  # a default route overlaps everything and says nothing
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(fields[0], strict=False))
    return found


def free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A /24 of 10.0.0.0/8 that overlaps nothing the root namespace has an address or a route in."""
    used = used_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise HostsUnavailable("no free /24 in 10.0.0.0/8 after 200 tries")


class Hosts:
    """``with Hosts(["h1", "h2"]) as hosts:`` makes the hosts; ``hosts["h1"]``, ``hosts.bridge_address``."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("hosts need distinct names")
        if len(names) > 250:
            raise ValueError("at most 250 hosts on one /24")
        self.names = list(names)
        # Short, so that an interface name ("rt" + 6 + index + letter) stays within Linux's 15 characters.
        self.suffix = uuid.uuid4().hex[:6]
        self.bridge = f"rtb{self.suffix}"
        self.subnet: ipaddress.IPv4Network | None = None
        self._hosts: dict[str, Host] = {}
        self._made_netns: list[str] = []
        self._made_links: list[str] = []
        self._down: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Hosts:
        """Make the bridge, the namespaces and their links; everything made is deleted again if one step fails."""
        try:
            self._make()
        except BaseException:
            self.stop()
            raise
        return self

    def _make(self) -> None:
        rng = random.Random()
        for _ in range(5):
            self.subnet = free_subnet(rng)
            ip("link", "add", "name", self.bridge, "type", "bridge")
            self._made_links.append(self.bridge)
            ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            # Another run may have taken the same /24 in the same instant: then both try again.
            if self._only_ours():
                break
            ip("link", "delete", self.bridge, check=False)
            self._made_links.remove(self.bridge)
        else:
            raise HostsUnavailable("could not find a /24 nobody else took")
        for index, name in enumerate(self.names, start=1):
            host = Host(
                name=name,
                netns=f"rlt-{self.suffix}-{name}",
                address=str(self.subnet.network_address + 1 + index),
                port_link=f"rt{self.suffix}{index}p",
                inner_link=f"rt{self.suffix}{index}i",
            )
            ip("netns", "add", host.netns)
            self._made_netns.append(host.netns)
            ip("link", "add", host.port_link, "type", "veth", "peer", "name", host.inner_link)
            self._made_links.append(host.port_link)
            ip("link", "set", host.inner_link, "netns", host.netns)
            ip("link", "set", host.port_link, "master", self.bridge)
            ip("link", "set", host.port_link, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.inner_link)
            ip("-n", host.netns, "link", "set", host.inner_link, "up")
            self._hosts[name] = host

    def _only_ours(self) -> bool:
        """No interface but our bridge has an address in our /24."""
        for line in ip("-4", "-o", "addr", "show").stdout.splitlines():
            fields = line.split()
            if "inet" not in fields or fields[1] == self.bridge:
                continue
            if ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network == self.subnet:
                return False
        return True

    def stop(self) -> None:
        """Kill what still runs in the namespaces, and delete the namespaces, the veths and the bridge.

        Never raises: whatever can be deleted is, and a leftover is reported on stderr.
        """
        for netns in self._made_netns:
            self._kill_inside(netns)
        leftovers = []
        for netns in reversed(self._made_netns):
            if ip("netns", "delete", netns, check=False).returncode != 0:
                leftovers.append(f"netns {netns}")
        for link in reversed(self._made_links):
            done = ip("link", "delete", link, check=False)
            # A veth goes with its namespace's end: "Cannot find device" means it is gone already.
            if done.returncode != 0 and "Cannot find device" not in done.stderr:
                leftovers.append(f"link {link}")
        self._made_netns.clear()
        self._made_links.clear()
        self._hosts.clear()
        if leftovers:
            print(f"hosts: could not delete {', '.join(leftovers)}")

    def _kill_inside(self, netns: str) -> None:
        """SIGKILL every process still in a namespace of ours (each was started by this test), and wait for them."""
        pids = [int(p) for p in ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while pids and time.monotonic() < deadline:
            pids = [int(p) for p in ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]
            time.sleep(0.05)

    def __enter__(self) -> Hosts:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- what it is ------------------------------------------------------------------------------------------

    @property
    def bridge_address(self) -> str:
        """The root namespace's address on the bridge: where the hosts reach what runs outside them."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def __getitem__(self, name: str) -> Host:
        return self._hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self._hosts.values())

    def pids(self, host: Host | str) -> set[int]:
        """The processes running on a host now."""
        netns = self._host(host).netns
        return {int(p) for p in ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()}

    # -- faults ----------------------------------------------------------------------------------------------

    def link_down(self, host: Host | str) -> None:
        """Cut a host off: its bridge port goes down (the host sees no carrier; nothing passes either way)."""
        found = self._host(host)
        ip("link", "set", found.port_link, "down")
        self._down.add(found.name)

    def link_up(self, host: Host | str) -> None:
        """Plug a host back in and wait until its end of the link has carrier again."""
        found = self._host(host)
        ip("link", "set", found.port_link, "up")
        self._down.discard(found.name)
        deadline = time.monotonic() + IP_TIMEOUT_S
        while "LOWER_UP" not in ip("-n", found.netns, "-o", "link", "show", found.inner_link).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {found.name}'s link has no carrier {IP_TIMEOUT_S:g} s after it was set up")
            time.sleep(0.02)

    def heal(self) -> None:
        """Every link that was cut, up again."""
        for name in list(self._down):
            self.link_up(name)

    def _host(self, host: Host | str) -> Host:
        return self._hosts[host if isinstance(host, str) else host.name]


class Forwarder:
    """A TCP forwarder in the root namespace: what connects to ``listen`` (``(address, port)``, port 0 for a free
    one) is joined to ``target``, byte for byte, each way in a thread of its own. For a service that listens on the
    loopback only (the hosts cannot reach it there). ``with Forwarder(...) as f:`` and ``f.port``; leaving the block
    closes the listener and every connection."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.connections = 0  # accepted so far
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        return self.listen[0]

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.getsockname()[1])

    def start(self) -> Forwarder:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(64)
        self._server = server
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._closed.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()
        for thread in self._threads:
            thread.join(EXIT_TIMEOUT_S)

    def __enter__(self) -> Forwarder:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="relay-test-forwarder")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=IP_TIMEOUT_S)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
                self.connections += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` until ``source`` ends (then end ``sink``'s writing side) or either fails."""
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
