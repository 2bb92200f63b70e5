"""Relay's edges: the Litestar API, the Dramatiq workers, the CLI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relay")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

USER_AGENT = f"relay/{__version__}"
