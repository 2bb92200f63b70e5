"""Shared fixtures: a real redis-server per test session, flushed per test; a Redis Cluster likewise, and one with
replicas per test for failovers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from delivery.redis_client import connect
from service.processes import RedisServer
from tests import slot_check
from tests.cluster import ClusterUnavailable, LocalCluster, free_ports
from tests.slot_check import ClusterNode, checked_scripts

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# TEST_SLOT_CHECK=1: the in-process tests run on a Redis Cluster of one node, on a store of TEST_PARTITIONS (8)
# partitions, with every Lua step marked so that Redis refuses any key it touches outside its first key's slot
# (see tests/slot_check.py).
SLOT_CHECK = os.environ.get("TEST_SLOT_CHECK", "").lower() in {"1", "true", "yes"}

__all__ = ["CI", "LocalCluster", "RedisServer"]


def _memory_dir() -> str | None:
    """A directory in memory (tmpfs) when the machine has one, else the default temporary directory.

    With ``appendfsync always`` on a disk, one fsync that waits behind the other test processes' writes holds
    Redis's one thread for seconds, and the API then rightly answers 503 (its commands wait 2 s at most): a
    failure of the disk, not of the code under test. On tmpfs the write still happens before the reply, so a
    SIGKILLed Redis still loses nothing it acknowledged, and fsync costs nothing.
    """
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server the tests own: they may stop, kill, freeze and start it again on the same port and data.

    Every write is fsynced before it is acknowledged, so a SIGKILL loses nothing a client was told is stored.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="relay-redis-", dir=_memory_dir()))
    server = (
        ClusterNode(data_dir=data_dir, appendfsync="always")
        if SLOT_CHECK
        else RedisServer(data_dir=data_dir, appendfsync="always")
    )
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        if CI:
            raise
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=SLOT_CHECK)
def slot_checked() -> Iterator[None]:
    """In slot-check mode, every test's store is cut into partitions and every step is checked (see above)."""
    with checked_scripts(int(os.environ.get("TEST_PARTITIONS") or 8)):
        yield


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the flushed Redis, made as Relay makes its own."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def away() -> AsyncIterator[aioredis.Redis]:
    """A client of a port where nothing listens: every command is refused, as by a node that is away."""
    (port,) = free_ports(1)
    client = connect(f"redis://127.0.0.1:{port}", retries=0)
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A flushed Redis for this test (restarted first if an earlier test stopped it)."""
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


def _start_cluster(**options: Any) -> LocalCluster:
    """A started :class:`LocalCluster` in memory; skipped (failed under CI) when no Redis 7 is here."""
    cluster = LocalCluster(base_dir=Path(_memory_dir() or tempfile.gettempdir()), **options)
    try:
        return cluster.start()
    except ClusterUnavailable as exc:
        if CI:
            raise
        pytest.skip(f"no Redis Cluster: {exc}")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A Redis Cluster of three masters without replicas for the whole session (about 2 s to start); the tests take
    it through ``cluster``, which flushes it."""
    cluster = _start_cluster(masters=3)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> LocalCluster:
    """The session's cluster, flushed (its killed nodes started again and its frozen ones thawed first)."""
    redis_cluster.heal()
    redis_cluster.flushall()
    return redis_cluster


@pytest.fixture
async def cluster_redis(cluster: LocalCluster) -> AsyncIterator[aiocluster.RedisCluster]:
    """An asyncio client of the flushed cluster, made as Relay makes its own."""
    client = connect(cluster.url, cluster=True)
    yield client
    await client.aclose()


@pytest.fixture
def replicated_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A cluster of three masters with a replica each, for this test alone (a failover changes it for good).

    Other :class:`LocalCluster` options come from an indirect parameter:
    ``@pytest.mark.parametrize("replicated_cluster", [{"auto_failover": False}], indirect=True)``.
    """
    options: dict[str, Any] = {"masters": 3, "replicas_per_master": 1, **getattr(request, "param", {})}
    cluster = _start_cluster(**options)
    yield cluster
    cluster.stop()


_REAL_PROCESSES = ("integration", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration and tests/browser ``integration``: they start real Relay
    processes, so ``-m "not integration"`` is the run of the fast tests alone. In slot-check mode, skip the tests
    marked ``standalone_only``, with their reason."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in _REAL_PROCESSES:
            item.add_marker(pytest.mark.integration)
        standalone = item.get_closest_marker("standalone_only")
        if SLOT_CHECK and standalone is not None:
            reason = standalone.args[0] if standalone.args else standalone.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"standalone Redis only: {reason}"))


# The end of a slot-checked run of the in-process tests: every Lua file of the repository must have run (see
# tests/slot_check.py). Each test process notes the scripts it ran; the first process gathers them.
_ROOT = Path(__file__).parents[1]
_IN_PROCESS = (_ROOT / "tests" / "delivery", _ROOT / "tests" / "service")
_ran_elsewhere: set[str] = set()
_checked: list[str] = []  # the Lua files checked, once the check ran
_never_run: list[str] = []


def _whole_in_process_run(config: pytest.Config) -> bool:
    """The run takes every in-process test (a run of a few files or of ``-k`` is not asked to run every script)."""
    if any(getattr(config.option, name, None) for name in ("keyword", "lf", "deselect")):
        return False
    paths = [Path(arg) for arg in config.args]
    if not all(path.is_dir() for path in paths):
        return False
    return all(any(wanted.is_relative_to(path.resolve()) for path in paths) for wanted in _IN_PROCESS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """An xdist test process is done: keep the Lua files it ran."""
    _ran_elsewhere.update(getattr(node, "workeroutput", {}).get("slot_check_ran", ()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not SLOT_CHECK:
        return
    ran = slot_check.ran_files(_ROOT)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist test process: the first one checks
        workeroutput["slot_check_ran"] = sorted(ran)
        return
    if session.shouldstop or session.shouldfail or not _whole_in_process_run(session.config):
        return
    _checked[:] = [name for name in slot_check.lua_files(_ROOT) if name not in slot_check.NOT_RUN_HERE]
    _never_run[:] = slot_check.never_run(_ROOT, ran | _ran_elsewhere)
    if _never_run:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _never_run:
        terminalreporter.section("Lua steps never run", sep="=", red=True, bold=True)
        terminalreporter.line(
            "In slot-check mode every Lua file must run at least once; no test ran: " + ", ".join(_never_run)
        )
    elif _checked:
        terminalreporter.line(f"slot check: each of the {len(_checked)} Lua files ran, every step in one slot")
