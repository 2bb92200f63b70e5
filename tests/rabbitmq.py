"""A RabbitMQ vhost of one's own on the machine's RabbitMQ (127.0.0.1:5672, guest), for tests and benchmarks that
run side by side and must never share a queue."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

HOST, PORT = "127.0.0.1", 5672


def available() -> bool:
    """RabbitMQ answers on its port and ``rabbitmqctl`` is there to make vhosts."""
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def vhost(prefix: str = "relay-test") -> Iterator[str]:
    """The URL of a new vhost, deleted when the block ends."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"amqp://guest:guest@{HOST}:{PORT}/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60)
