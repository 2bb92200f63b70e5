"""Loaded with ``RELAY_TASK_MODULES=tests.rebinding_dns`` (by the API and the workers alike): one name,
:data:`REBINDING_HOST`, whose answer changes between the check at submit and the connection at send time, as a
DNS-rebinding attacker's name does. Nothing here ever makes a process connect anywhere but 127.0.0.1.

- The submit check (``check_callback_url``, in the API) gets a public address for the name, so the callback is
  accepted. The API only resolves a callback's name; it never connects to it.
- The webhook transport's resolution (``resolve_checked`` as ``delivery.http11`` calls it, in the workers) gets
  127.0.0.1, which the address guard must refuse there; had it not, the request would reach 127.0.0.1, where the
  test's receiver listens.
- Any other resolution of the name (the system resolver) fails, so no other answer can lead to a connection.
"""

from __future__ import annotations

import sys

import delivery.address_guard as guard
import delivery.http11 as http11
from delivery.address_guard import CallbackTarget, Resolve

REBINDING_HOST = "rebinding.relay.test"
SUBMIT_TIME_ANSWER = ("93.184.215.14",)  # a public address: it passes the guard, and is never connected to
SEND_TIME_ANSWER = ("127.0.0.1",)

_system_resolve = guard._system_resolve
_check_callback_url = guard.check_callback_url
_resolve_checked = http11.resolve_checked


def _is_rebinding(host: str) -> bool:
    return host.rstrip(".").lower() == REBINDING_HOST


def _answering(answer: tuple[str, ...]) -> Resolve:
    async def resolve(host: str, port: int) -> list[str]:
        return list(answer) if _is_rebinding(host) else await _system_resolve(host, port)

    return resolve


async def _system_resolve_but_not_the_name(host: str, port: int) -> list[str]:
    if _is_rebinding(host):
        raise OSError(f"{host} has no answer but the two of tests.rebinding_dns")
    return await _system_resolve(host, port)


async def check_callback_url(url: str, *, allow_private: bool, resolve: Resolve | None = None) -> CallbackTarget:
    return await _check_callback_url(
        url, allow_private=allow_private, resolve=resolve or _answering(SUBMIT_TIME_ANSWER)
    )


async def resolve_checked(host: str, port: int, *, allow_private: bool, resolve: Resolve | None = None) -> list[str]:
    return await _resolve_checked(
        host, port, allow_private=allow_private, resolve=resolve or _answering(SEND_TIME_ANSWER)
    )


guard._system_resolve = _system_resolve_but_not_the_name  # type: ignore[assignment]
guard.check_callback_url = check_callback_url  # type: ignore[assignment]
http11.resolve_checked = resolve_checked  # type: ignore[assignment]
_routes = sys.modules.get("service.api.routes.tasks")  # imported before this module in the API
if _routes is not None:
    _routes.check_callback_url = check_callback_url  # type: ignore[attr-defined]
