"""Fixtures that run Relay for real: `relay api` and `relay worker` processes on a real Redis, a real receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from delivery import keys
from tests import rabbitmq
from tests.conftest import CI
from tests.support import Api, Receiver, RelayProcess, WsClient, relay_env, run_receiver, store_layout


@pytest.fixture(autouse=True)
def _store_layout() -> Iterator[None]:
    """Keys a test reads or writes itself are named as the Relay processes under test name them."""
    old = keys.use(store_layout())
    yield
    keys.use(old)


if TYPE_CHECKING:
    from tests.conftest import RedisServer


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own on the machine's RabbitMQ (so that tests running side by side, or
    earlier runs, never share a queue), deleted afterwards."""
    with rabbitmq_vhost() as url:
        yield url


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """The URL of a new RabbitMQ vhost on the machine's RabbitMQ, deleted when the block ends; skips the test (fails
    it under CI) when RabbitMQ is not there."""
    if not rabbitmq.available():
        if CI:
            pytest.fail("RabbitMQ (and rabbitmqctl) are needed on 127.0.0.1:5672")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    with rabbitmq.vhost() as url:
        yield url


def purge_queues(amqp_url: str) -> None:
    """Drop every message in the queues Dramatiq declares for `relay` (as a broker that lost them would)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in ("relay", "relay.DQ"):
            channel.queue_purge(queue)
    finally:
        connection.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver() as r:
        yield r


StartRelay = Callable[..., RelayProcess]


@pytest.fixture
def start_relay(redis_url: str, request: pytest.FixtureRequest) -> Iterator[StartRelay]:
    """``start_relay("api" | "worker", *args, wait=True, **RELAY_ENV)`` starts a process stopped after the test."""
    started: list[RelayProcess] = []

    def start(role: str, *args: str, wait: bool = True, **env: str) -> RelayProcess:
        if role == "worker" and not args:
            args = ("--processes", "1", "--threads", "8")
        process = RelayProcess(role, relay_env(redis_url, **env), *args)
        started.append(process)
        return process.start(wait=wait)

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for process in started:  # signal every process first, so that they stop side by side
        process.signal_stop()
    for process in started:
        process.stop()
        if failed:
            print(f"----- relay {process.role} output -----\n{process.output()[-5000:]}")
        process.log_path.unlink(missing_ok=True)


@dataclass
class Relay:
    api: RelayProcess
    worker: RelayProcess
    client: Api


@pytest.fixture
def relay(start_relay: StartRelay) -> Iterator[Relay]:
    """One API and one worker with the test settings of :func:`tests.support.relay_env`."""
    api = start_relay("api", wait=False)
    worker = start_relay("worker", wait=False)
    api.wait_ready()
    worker.wait_ready()
    client = Api(api.url)
    yield Relay(api=api, worker=worker, client=client)
    client.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


StartCluster = Callable[..., Relay]


@pytest.fixture
def start_cluster(start_relay: StartRelay) -> Iterator[StartCluster]:
    """``start_cluster(**RELAY_ENV)``: one API and one worker sharing these setting overrides."""
    clients: list[Api] = []

    def start(**env: str) -> Relay:
        api = start_relay("api", wait=False, **env)
        worker = start_relay("worker", wait=False, **env)
        api.wait_ready()
        worker.wait_ready()
        clients.append(Api(api.url))
        return Relay(api=api, worker=worker, client=clients[-1])

    yield start
    for client in clients:
        client.close()


@contextmanager
def relay_for_many_tests(redis_server: RedisServer, **env: str) -> Iterator[Relay]:
    """One API and one worker on a freshly flushed Redis, for a class- or module-scoped fixture.

    Starting and stopping the pair takes seconds, so tests that do not care about each other's tasks share one.
    Such tests must not use ``redis_url`` (it flushes) and must count what they check from their own tasks.
    """
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.close()
    api = RelayProcess("api", relay_env(redis_server.url, **env))
    worker = RelayProcess("worker", relay_env(redis_server.url, **env), "--processes", "1", "--threads", "8")
    try:
        api.start(wait=False)
        worker.start(wait=False)
        api.wait_ready()
        worker.wait_ready()
        http = Api(api.url)
        try:
            yield Relay(api=api, worker=worker, client=http)
        finally:
            http.close()
    finally:
        for process in (api, worker):
            process.signal_stop()
        for process in (api, worker):
            process.stop()
            # Captured by pytest: shown with the report of the test whose teardown this is, if it failed.
            print(f"----- relay {process.role} output -----\n{process.output()[-5000:]}")
            process.log_path.unlink(missing_ok=True)


OpenWs = Callable[..., WsClient]


@pytest.fixture
def open_ws(shared: Relay) -> Iterator[OpenWs]:
    """``open_ws(base_url=None, **WsClient options)``: a socket (on the module's ``shared`` API unless
    ``base_url`` says otherwise), closed after the test. Modules that use it define a ``shared`` fixture."""
    opened: list[WsClient] = []

    def open_(base_url: str | None = None, **options: Any) -> WsClient:
        opened.append(WsClient(base_url or shared.api.url, **options))
        return opened[-1]

    yield open_
    for client in opened:
        client.close()
