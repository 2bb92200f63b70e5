"""Each tenant's signing secrets, newest first; a rotated-out secret keeps signing for 24 h.

Webhooks are signed with the secrets read fresh for each attempt, so that a rotated secret signs from then on. On a
Redis Cluster a tenant's secrets are one key on one master, while its tasks and destinations spread over all of
them: when that master is away, a webhook ready on another master is signed with the secrets this process read last
for the tenant (stale if error) rather than wait for it. No rotation can happen while the key is away (it is written
there), and a read is used for at most ``ROTATION_OVERLAP_S``: whatever signed at the last read still signs by the
contract (a rotated-out secret signs for 24 h beside the new one), so a receiver that verified then verifies now.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from delivery import keys
from delivery.errors import SecretsUnavailable
from delivery.records import SecretEntry
from delivery.signing import generate_secret
from delivery.storage_away import Outages, is_away

log = logging.getLogger("relay.delivery")

# How the operator's secrets are named beside tenants' ("tenant acme") in what this process remembers and logs.
_OPERATOR = "the operator"

# How long a replaced secret keeps signing beside the new one.
ROTATION_OVERLAP_S = 24 * 3600.0
# Tenants whose last read secrets one process keeps to sign with while their node is away (least recently used
# dropped first): a few KB each, so a few thousand tenants cost a few MB at most.
DEFAULT_REMEMBERED_TENANTS = 4096
# Secrets kept per tenant, newest first: the current one and those a few rotations within 24 h left signing.
REMEMBERED_SECRETS = 4

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[SecretEntry]).decode


def live_secrets(raw: bytes | str | None, *, now: float | None = None) -> list[str]:
    """The secrets that sign now, newest first, from the stored value."""
    if not raw:
        return []
    moment = time.time() if now is None else now
    return [e.secret for e in _decode(raw) if e.expires_at is None or e.expires_at > moment]


async def read_apart(read: Awaitable[Any]) -> bytes | None:
    """The stored secrets that ``read`` (a GET of a tenant's key) answers, read apart from the step that leased one of
    its webhooks (on a cluster they live on another master than the step's keys). None when that master is away:
    the step has been written already, and the engine then signs as :meth:`SecretStore.signing` says."""
    try:
        raw = await read
    except (RedisError, OSError) as exc:
        if is_away(exc):
            return None
        raise
    return raw if isinstance(raw, bytes) else None


class SecretStore:
    """The signing secrets of each tenant and of the operator, read from Redis.

    :meth:`live` and :meth:`live_ops` read them (the API answers with them; a read that fails raises).
    :meth:`signing` and :meth:`signing_ops` read them to sign with: when the read fails because the node of the key
    is away, they answer the secrets this process read last for it, saying so once per outage.

    Args:
        redis: the storage client.
        remembered: how many keys' secrets to keep for that (least recently used dropped first).
        clock: seconds on a monotonic clock, that times how old a read is.
    """

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        remembered: int = DEFAULT_REMEMBERED_TENANTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if remembered < 1:
            raise ValueError("remembered must be at least 1")
        self._redis = redis
        self._remembered = remembered
        self._clock = clock
        # whose ("tenant acme", "the operator") -> (when read, on the monotonic clock; the secrets then, newest first)
        self._last: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()
        self._outages = Outages(
            log,
            "the signing secrets",
            fallback="cannot be read ({cause}); signing with the last read until they can",
            again="are read again",
        )

    async def live(self, tenant: str) -> list[str]:
        """The secrets that sign now; makes the tenant's first secret when it has none."""
        return await self._live(keys.secrets(tenant), f"tenant {tenant}")

    async def live_ops(self) -> list[str]:
        """The operator's secrets, that sign operational events; made on first use."""
        return await self._live(keys.OPS_SECRETS, _OPERATOR)

    async def signing(self, tenant: str) -> list[str]:
        """The secrets to sign a webhook of ``tenant`` with: read now, else (its node away) the last read.

        Raises:
            SecretsUnavailable: the node is away and this process never read them.
        """
        return await self._signing(keys.secrets(tenant), tenant)

    async def signing_ops(self) -> list[str]:
        """The operator's secrets to sign an operational event with, as :meth:`signing`."""
        return await self._signing(keys.OPS_SECRETS, None)

    def remember(self, tenant: str, secrets: list[str]) -> None:
        """Keep ``secrets``, read by a step of ``tenant``'s delivery, as the tenant's last read."""
        self._keep(f"tenant {tenant}", secrets)
        self._outages.back(f"tenant {tenant}")

    async def _signing(self, key: str, tenant: str | None) -> list[str]:
        whose = f"tenant {tenant}" if tenant is not None else _OPERATOR
        try:
            secrets = await self._live(key, whose)
        except (RedisError, OSError) as exc:
            if not is_away(exc):
                raise
            cause = f"{type(exc).__name__}: {exc}"
            read_at, last = self._last.get(whose, (None, []))
            if read_at is None or self._clock() - read_at > ROTATION_OVERLAP_S:
                raise SecretsUnavailable(tenant, cause) from None
            self._last.move_to_end(whose)
            self._outages.away(whose, exc)
            return list(last)
        self._outages.back(whose)
        return secrets

    async def _live(self, key: str, whose: str) -> list[str]:
        secrets = live_secrets(await self._redis.get(key))
        if not secrets:
            first = [SecretEntry(secret=generate_secret(), created_at=time.time())]
            await self._redis.set(key, _encode(first), nx=True)
            secrets = live_secrets(await self._redis.get(key))
        self._keep(whose, secrets)
        return secrets

    def _keep(self, whose: str, secrets: list[str]) -> None:
        if not secrets:
            return
        self._last[whose] = (self._clock(), secrets[:REMEMBERED_SECRETS])
        self._last.move_to_end(whose)
        while len(self._last) > self._remembered:
            dropped, _ = self._last.popitem(last=False)
            self._outages.forget(dropped)

    async def current(self, tenant: str) -> str:
        return (await self.live(tenant))[0]

    async def rotate(self, tenant: str) -> str:
        """Make a new current secret; the ones before it expire ``ROTATION_OVERLAP_S`` from now."""
        await self.live(tenant)
        key = keys.secrets(tenant)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    now = time.time()
                    entries = [e for e in _decode(raw or b"[]") if e.expires_at is None or e.expires_at > now]
                    for entry in entries:
                        if entry.expires_at is None:
                            entry.expires_at = now + ROTATION_OVERLAP_S
                    new = SecretEntry(secret=generate_secret(), created_at=now)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, _encode([new, *entries]))
                    await pipe.execute()
                    return new.secret
                except WatchError:
                    continue
