"""Each tenant's signing secrets, newest first; a rotated-out secret keeps signing for 24 h."""

from __future__ import annotations

import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from delivery import keys
from delivery.records import SecretEntry
from delivery.signing import generate_secret

# How long a replaced secret keeps signing beside the new one.
ROTATION_OVERLAP_S = 24 * 3600.0

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[SecretEntry]).decode


def live_secrets(raw: bytes | str | None, *, now: float | None = None) -> list[str]:
    """The secrets that sign now, newest first, from the stored value."""
    if not raw:
        return []
    moment = time.time() if now is None else now
    return [e.secret for e in _decode(raw) if e.expires_at is None or e.expires_at > moment]


class SecretStore:
    def __init__(self, *, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def live(self, tenant: str) -> list[str]:
        """The secrets that sign now; makes the tenant's first secret when it has none."""
        return await self._live(keys.secrets(tenant))

    async def live_ops(self) -> list[str]:
        """The operator's secrets, that sign operational events; made on first use."""
        return await self._live(keys.OPS_SECRETS)

    async def _live(self, key: str) -> list[str]:
        secrets = live_secrets(await self._redis.get(key))
        if secrets:
            return secrets
        first = [SecretEntry(secret=generate_secret(), created_at=time.time())]
        await self._redis.set(key, _encode(first), nx=True)
        return live_secrets(await self._redis.get(key))

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
