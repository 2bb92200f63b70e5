"""The webhook bench's HTTP side: submits to the API, asks the receiver what arrived, counts Redis commands."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from scripts.benchmark.stack import ADMIN_TOKEN, API_KEY

# How often the receiver is asked how many webhooks it holds.
POLL_S = 0.05


class _Accepted(msgspec.Struct):
    id: str


@dataclass
class Drained:
    arrivals: dict[str, float]
    dupes: int
    not_succeeded: int
    sample: dict[str, Any] | None


class Client:
    """The benchmark's HTTP side: submits to the API and talks to the receiver.

    ``api_keys``: the tenants it submits for; a phase that spreads its tasks names the tenant of each by index
    (round robin), the others submit as the first.
    """

    def __init__(self, urls: dict[str, str], api_keys: Sequence[str] = (API_KEY,)) -> None:
        if not api_keys:
            raise ValueError("a client submits for one tenant at least")
        self.urls = urls
        self._decode_task = msgspec.json.Decoder(_Accepted).decode
        self._decode_drain = msgspec.json.Decoder(Drained).decode
        self._auths = [{"authorization": f"Bearer {key}", "content-type": "application/json"} for key in api_keys]
        self._admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        self.errors: collections.Counter[str] = collections.Counter()

    @property
    def tenants(self) -> int:
        return len(self._auths)

    def submission(self, i: int, url: str | None = None) -> bytes:
        return msgspec.json.encode({"kind": "echo", "input": {"i": i}, "webhook": {"url": url or self.urls["hook"]}})

    async def destinations(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(self.urls["api"] + "/v1/destinations", headers=self._admin) as response:
            return list((await response.json())["items"])

    async def bad_counts(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async with session.get(self.urls["receiver"] + "/bad") as response:
            return dict(await response.json())

    async def submit(self, session: aiohttp.ClientSession, body: bytes, tenant: int = 0) -> str | None:
        """Submit ``body`` as tenant ``tenant`` (modulo the client's tenants); the task's id, or None (counted)."""
        headers = self._auths[tenant % len(self._auths)]
        try:
            async with session.post(self.urls["api"] + "/v1/tasks", data=body, headers=headers) as response:
                raw = await response.read()
                if response.status != 202:
                    self.errors[f"HTTP {response.status}"] += 1
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            return None
        return self._decode_task(raw).id

    async def received(self, session: aiohttp.ClientSession) -> int:
        async with session.get(self.urls["receiver"] + "/count") as response:
            return int((await response.json())["count"])

    async def drain(self, session: aiohttp.ClientSession) -> Drained:
        async with session.post(self.urls["receiver"] + "/drain") as response:
            return self._decode_drain(await response.read())

    async def wait_for(self, session: aiohttp.ClientSession, expected: int, timeout_s: float) -> None:
        """Until the receiver holds ``expected`` webhooks or ``timeout_s`` passes."""
        for _ in range(max(1, int(timeout_s / POLL_S))):
            if await self.received(session) >= expected:
                return
            await asyncio.sleep(POLL_S)

    async def explain(self, session: aiohttp.ClientSession, task_ids: list[str]) -> list[dict[str, Any]]:
        """What Relay says about tasks whose webhook never arrived: status and delivery attempts (read as the
        operator, who reads every tenant's)."""
        found = []
        for task_id in task_ids:
            url = f"{self.urls['api']}/v1/tasks/{task_id}"
            async with session.get(url, headers=self._admin) as response:
                task = await response.json() if response.status == 200 else {"status": f"HTTP {response.status}"}
            async with session.get(url + "/deliveries", headers=self._admin) as response:
                attempts = (await response.json()).get("attempts", []) if response.status == 200 else []
            found.append(
                {
                    "task_id": task_id,
                    "status": task.get("status"),
                    "attempts": [
                        {k: a.get(k) for k in ("status_code", "error", "outcome") if k in a} for a in attempts
                    ],
                }
            )
        return found

    async def signing_secret(self, session: aiohttp.ClientSession, tenant: int = 0) -> str:
        headers = self._auths[tenant % len(self._auths)]
        async with session.get(self.urls["api"] + "/v1/signing-secret", headers=headers) as response:
            return str((await response.json())["secret"])


def storage_nodes(urls: dict[str, str]) -> dict[str, str]:
    """The storage's Redis URLs by address: the one Redis, or each seed of a cluster (the bench names every master
    a seed, so these are all of its nodes)."""
    found = {}
    for url in urls["redis"].split(","):
        parts = urlsplit(url.strip())
        found[f"{parts.hostname}:{parts.port}"] = url.strip()
    return found


def redis_calls(url: str) -> collections.Counter[str]:
    """Calls of each Redis command so far (commands run inside Lua scripts count too, and so do the scripts' own
    EVALSHA calls)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    return collections.Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


def calls_since(url: str, before: collections.Counter[str]) -> collections.Counter[str]:
    """The calls of each command since ``before`` was read, less the INFO that read it."""
    calls = redis_calls(url) - before
    calls.subtract({"info": 1})
    return +calls
