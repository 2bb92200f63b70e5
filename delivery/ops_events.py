"""Operational events: a destination opened or recovered, POSTed to ``RELAY_OPS_WEBHOOK_URL``.

Sent like every webhook (a :class:`~delivery.webhook.WebhookSender`, Standard Webhooks) but signed with the
operator's secret. Best effort: a few tries, then a log line; at most ``MAX_PENDING`` wait at once, so a dead
operator endpoint cannot pile them up in memory.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import msgspec
from redis.exceptions import RedisError

from delivery.destinations import DestinationStore
from delivery.errors import SecretsUnavailable
from delivery.ids import new_id
from delivery.signing_secrets import SecretStore
from delivery.webhook import WebhookSender
from schemas.destinations import OpsEvent

log = logging.getLogger("relay.ops")

# Waits between the tries of one event.
RETRY_WAITS_S = (1.0, 5.0, 30.0)
MAX_PENDING = 100

_encode = msgspec.json.Encoder().encode


class OpsNotifier:
    def __init__(
        self,
        *,
        url: str,
        sender: WebhookSender,
        secrets: SecretStore,
        destinations: DestinationStore,
        retry_waits_s: tuple[float, ...] = RETRY_WAITS_S,
    ) -> None:
        self._url = url
        self._sender = sender
        self._secrets = secrets
        self._destinations = destinations
        self._retry_waits_s = retry_waits_s
        self._pending: set[asyncio.Task[None]] = set()

    def notify(self, change: str, destination_id: str) -> None:
        """Send ``destination.<change>`` for the destination as it is now, in the background."""
        if len(self._pending) >= MAX_PENDING:
            log.warning("dropped the operational event destination.%s of %s: too many waiting", change, destination_id)
            return
        task = asyncio.create_task(self._send(change, destination_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, change: str, destination_id: str) -> None:
        try:
            destination = await self._destinations.get(destination_id)
            if destination is None:
                return
            event = OpsEvent(
                id=new_id("evt"), type=f"destination.{change}", created_at=datetime.now(UTC), data=destination
            )
            body = _encode(event)
            secrets = await self._secrets.signing_ops()
        except (RedisError, OSError, SecretsUnavailable) as exc:
            log.warning("could not build the operational event destination.%s (%s)", change, exc)
            return
        for wait in (*self._retry_waits_s, None):
            result = await self._sender.send(self._url, event.id, body, secrets)
            if result.ok:
                return
            if wait is None:
                log.warning("the operational event %s (%s) was not delivered: %s", event.id, event.type, result.error)
                return
            await asyncio.sleep(wait)

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
