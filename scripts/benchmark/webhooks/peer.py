"""The naive peer's stack for the webhook bench: its own Redis, API (uvicorn) and worker (the dramatiq CLI).

The peer (``scripts.naive_peer``) runs after Relay's phases, on the same receiver, once Relay's own processes
are stopped, so that neither disturbs the other's figures. Its services are named ``peer-…`` in the stack and
measured in the same columns as Relay's.
"""

from __future__ import annotations

import argparse

from delivery.signing import generate_secret
from scripts.benchmark.meter import CpuMeter
from scripts.benchmark.stack import API_KEY, STARTUP_TIMEOUT_S, VENV, Stack, http_ok, log, wait_until
from service.processes import RedisServer, free_port

# The stack's names of the peer's services start with this.
PREFIX = "peer-"
UVICORN = str(VENV / "bin" / "uvicorn")
DRAMATIQ = str(VENV / "bin" / "dramatiq")
# Relay's processes, stopped before the peer starts (in this order).
RELAY_SERVICES = ("worker", "api", "redis")


class PeerCpuMeter(CpuMeter):
    """The webhook bench's columns for the peer: ``peer-api`` counts as ``api`` and so on; Relay's processes (stopped
    by then) as the rest of the box."""

    @staticmethod
    def group(service: str) -> str:
        if service.startswith(PREFIX):
            return service.removeprefix(PREFIX)
        return "receiver" if service == "receiver" else "other"


def stop_relay(stack: Stack) -> None:
    """Stop Relay's worker, API and Redis: their part of the run is over, and idle they would still poll."""
    for name in RELAY_SERVICES:
        if name in stack.services:
            stack.services[name].stop()


def start_peer(stack: Stack, args: argparse.Namespace, urls: dict[str, str]) -> dict[str, str]:
    """Start the peer's Redis, API and worker, as many processes and threads as Relay's; return the URLs the bench
    client needs (Relay's receiver and hook, the peer's API and Redis)."""
    server = RedisServer(
        data_dir=stack.workdir / "peer-data",
        appendonly=False,
        log_path=stack.workdir / f"{PREFIX}redis.log",
        new_session=True,
        start_timeout_s=STARTUP_TIMEOUT_S,
    )
    server.start()
    assert server.process is not None
    stack.adopt(f"{PREFIX}redis", server.process, server.log_path)
    stack.env.update(PEER_REDIS_URL=server.url, PEER_API_KEY=API_KEY, PEER_SIGNING_SECRET=generate_secret())

    api_port = free_port()
    api = stack.start(
        f"{PREFIX}api",
        [
            UVICORN,
            "scripts.naive_peer.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(api_port),
            "--workers",
            str(args.api_workers),
            "--no-access-log",  # Relay's API logs no line per request either
        ],
    )
    worker = stack.start(
        f"{PREFIX}worker",
        [
            DRAMATIQ,
            "scripts.naive_peer.tasks",
            "--processes",
            str(args.worker_processes),
            "--threads",
            str(args.threads),
        ],
    )
    wait_until(api, lambda: http_ok(f"http://127.0.0.1:{api_port}/health"), "200 on /health")

    def workers_ready() -> bool:
        text = worker.log_path.read_text(errors="replace")
        return text.count("Worker process is ready for action.") >= int(args.worker_processes)

    wait_until(worker, workers_ready, "'ready for action'")
    log(f"  peer: api on :{api_port}, redis {server.url}")
    return {
        "redis": server.url,
        "api": f"http://127.0.0.1:{api_port}",
        "receiver": urls["receiver"],
        "hook": urls["hook"],
    }
