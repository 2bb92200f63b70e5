"""The ``relay`` command: ``serve`` (everything in one), ``api``, ``worker`` and the client commands."""

from service.cli.commands import main

__all__ = ["main"]
