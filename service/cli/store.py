"""``relay store acknowledge``: the operator has seen that the store came back without its data."""

from __future__ import annotations

import click

from service.cli.client import ADMIN_TOKEN_ENV, api_options, open_relay


@click.group("store")
def store() -> None:
    """The store (Redis) as a whole."""


@store.command("acknowledge")
@api_options(ADMIN_TOKEN_ENV, "The admin token.")
def acknowledge(url: str, token: str) -> None:
    """Acknowledge that the store lost its data, so that /ready answers 200 again.

    Relay notices a Redis that came back empty (its files gone): every node logs it once at ERROR, /ready
    answers 503 with the reason, and sockets and streams following tasks get an error and close. What was in
    the store is gone; this only says that an operator has seen it.
    """
    with open_relay(url, token) as relay:
        acknowledged = relay.ops.acknowledge_store_loss()
    if acknowledged:
        click.echo("acknowledged: /ready answers 200 again (once Redis and the broker answer)")
    else:
        click.echo("nothing to acknowledge: the store has not lost its data")
