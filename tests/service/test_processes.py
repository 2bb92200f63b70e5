"""The process harness: a redis-server we start, restart, kill, freeze and thaw on one port and data directory."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.processes import RedisServer, StartError, free_port, wait_for

# A frozen server must look dead within this long; a running one answers well inside it.
SHORT_TIMEOUT_S = 0.5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(data_dir=tmp_path / "redis", appendfsync="always", start_timeout_s=10)
    started.start()
    yield started
    if started.running:
        started.thaw()  # a test that failed while it was frozen
    started.stop()


def quick_client(server: RedisServer) -> redis.Redis:
    """No retries and a short socket timeout: a server that does not answer fails the call at once."""
    return server.client(
        socket_connect_timeout=SHORT_TIMEOUT_S, socket_timeout=SHORT_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
    )


def test_free_port_is_free_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_started_server_answers_on_loopback(server: RedisServer) -> None:
    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = quick_client(server)
    assert client.ping()
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("appendfsync")["appendfsync"] == "always"
    client.close()


def test_restart_keeps_port_and_data(server: RedisServer) -> None:
    port = server.port
    client = quick_client(server)
    client.set("kept", "yes")
    server.restart()
    assert server.port == port
    assert client.get("kept") == b"yes"
    client.close()


def test_killed_server_stops_answering_and_its_acknowledged_writes_survive(server: RedisServer) -> None:
    client = quick_client(server)
    client.set("acknowledged", "1")
    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.start()
    assert client.get("acknowledged") == b"1"
    client.close()


def test_frozen_server_stops_answering_until_thawed(server: RedisServer) -> None:
    client = quick_client(server)
    assert client.ping()
    server.freeze()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    server.thaw()
    assert wait_for(lambda: _answers(client), timeout_s=5, message="PING after thaw")
    client.close()


def test_stop_ends_a_frozen_server(server: RedisServer) -> None:
    server.freeze()
    server.stop(timeout_s=5)
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        quick_client(server).ping()


def test_a_server_that_exits_at_start_names_its_log(server: RedisServer, tmp_path: Path) -> None:
    same_port = RedisServer(data_dir=tmp_path / "other", port=server.port, start_timeout_s=10)
    with pytest.raises(StartError, match="exited at start") as caught:
        same_port.start()
    assert caught.value.log_path == tmp_path / "other" / "redis.log"
    assert str(caught.value.log_path) in str(caught.value)
    assert caught.value.log_path.read_text()  # Redis said why there
    assert not same_port.running


def test_appendfsync_must_be_a_redis_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        RedisServer(data_dir=tmp_path, appendfsync="sometimes")  # type: ignore[arg-type]


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
