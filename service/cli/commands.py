"""The ``relay`` command."""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path

import click

from delivery.errors import ConfigError
from service.settings import Settings

# The largest WebSocket frame a client may send (its frames are small JSON).
WS_MAX_FRAME_BYTES = 64 * 1024
# Where `relay serve` looks for settings besides the environment.
TOML_PATH = Path("relay.toml")


def _settings(*, toml: bool = False) -> Settings:
    try:
        return Settings.from_env(toml_path=TOML_PATH if toml else None)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _check_storage(settings: Settings) -> None:
    """Stop at once, with one line, when the storage is not what the settings say (see service.preflight)."""
    from service.preflight import check_storage

    try:
        check_storage(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _check_task_modules(settings: Settings) -> None:
    """Fail at once, with the reason, on a RELAY_TASK_MODULES entry that cannot be imported (not deep in a child)."""
    from service.kinds import load_kinds

    try:
        load_kinds(settings.task_modules)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="relay")
def main() -> None:
    """Relay: run work on Dramatiq workers and deliver its results by WebSocket and signed webhooks."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64), help="worker processes")
@click.option(
    "--threads", default=16, show_default=True, type=click.IntRange(1, 1024), help="tasks at once per worker process"
)
@click.option(
    "--allow-private-callbacks",
    is_flag=True,
    help="Let webhooks go to private and loopback addresses (a receiver on this machine); never in production.",
)
def serve(host: str, port: int, processes: int, threads: int, allow_private_callbacks: bool) -> None:
    """Everything in one: Redis (embedded unless RELAY_REDIS_URL is set), the API and the workers."""
    from service.cli.serve import serve as run

    settings = _settings(toml=True)
    try:
        sys.exit(
            run(
                settings,
                host=host,
                port=port,
                processes=processes,
                threads=threads,
                allow_private=allow_private_callbacks,
            )
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256), help="API processes")
def api(host: str, port: int, workers: int) -> None:
    """The HTTP and WebSocket API only (needs RELAY_REDIS_URL)."""
    import uvicorn

    settings = _settings()
    if settings.redis_url is None:
        raise click.ClickException("RELAY_REDIS_URL is not set (or use `relay serve`, which embeds Redis)")
    _check_task_modules(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_storage(settings)
    uvicorn.run(
        "service.api.app:app_from_env",
        log_config=_uvicorn_log_config(),
        factory=True,
        http="service.api.http_protocol:BoundedHttpToolsProtocol",  # RELAY_REQUEST_TIMEOUT per request
        host=host,
        port=port,
        workers=workers,
        ws_per_message_deflate=False,  # ~40 KB a socket for little gain on small JSON frames
        ws_max_size=WS_MAX_FRAME_BYTES,  # a bigger frame closes the socket with 1009
        access_log=False,
        # Relay decides whom X-Forwarded-For names (RELAY_TRUST_FORWARDED); uvicorn's own rewrite of the peer (on by
        # default for a loopback peer) would let a client behind a local proxy name itself.
        proxy_headers=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


class _QuietSockets(logging.Filter):
    """Drop uvicorn's lines per WebSocket (accepted, open, closed): thousands of browsers would drown the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return message not in ("connection open", "connection closed") and not message.endswith("[accepted]")


def _uvicorn_log_config() -> dict[str, object]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"quiet_sockets": {"()": _QuietSockets}}
    config["handlers"]["default"]["filters"] = ["quiet_sockets"]
    return config


@main.command()
@click.option("--processes", default=os.cpu_count() or 1, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--threads", default=16, show_default=True, type=click.IntRange(1, 1024), help="tasks at once per process"
)
def worker(processes: int, threads: int) -> None:
    """Dramatiq workers only (needs RELAY_REDIS_URL; RELAY_BROKER_URL may point at RabbitMQ).

    A worker process that dies is started again; SIGTERM or Ctrl-C stops them all."""
    settings = _settings()
    if settings.redis_url is None:
        raise click.ClickException("RELAY_REDIS_URL is not set (or use `relay serve`, which embeds Redis)")
    _check_task_modules(settings)
    _check_storage(settings)
    from service.worker.supervisor import main as supervise

    supervise(processes, threads)


def _attach_client_commands() -> None:
    from service.cli.cluster import cluster
    from service.cli.destinations import destinations
    from service.cli.dlq import dlq
    from service.cli.receive import receive
    from service.cli.signing_secret import signing_secret
    from service.cli.store import store
    from service.cli.submit import submit
    from service.cli.tasks import tasks

    main.add_command(dlq)
    main.add_command(submit)
    main.add_command(destinations)
    main.add_command(tasks)
    main.add_command(signing_secret)
    main.add_command(receive)
    main.add_command(store)
    main.add_command(cluster)


_attach_client_commands()

if __name__ == "__main__":
    main()
