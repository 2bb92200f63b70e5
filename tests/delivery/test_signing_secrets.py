"""Signing secrets against a real Redis: read fresh while it answers, the last read while it is away (said once per
outage), none for a process that never read them, and no more tenants kept than asked."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from delivery import keys
from delivery.errors import SecretsUnavailable
from delivery.redis_client import connect
from delivery.signing_secrets import ROTATION_OVERLAP_S, SecretStore, read_apart
from service.processes import RedisServer
from tests.service.api.conftest import Clock


def outage_lines(caplog: pytest.LogCaptureFixture, whose: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"the signing secrets of {whose} cannot be read" in r.getMessage()]


async def test_signing_reads_fresh_so_a_rotated_secret_signs_at_once(redis: aioredis.Redis) -> None:
    store = SecretStore(redis=redis)
    (first,) = await store.signing("acme")
    rotated = await SecretStore(redis=redis).rotate("acme")  # by another process: the API
    assert await store.signing("acme") == [rotated, first]


async def test_with_redis_away_it_signs_with_the_last_read_and_says_so_once_per_outage(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(redis_url, retries=0)
    try:
        store = SecretStore(redis=client)
        read = await store.signing("acme")
        redis_server.kill()
        with caplog.at_level(logging.INFO, logger="relay.delivery"):
            assert await store.signing("acme") == read
            assert await store.signing("acme") == read
            assert len(outage_lines(caplog, "tenant acme")) == 1
            assert all(r.exc_info is None for r in caplog.records)  # a line, not a traceback
            with pytest.raises(SecretsUnavailable, match="tenant globex"):  # never read here
                await store.signing("globex")

            redis_server.start()
            rotated = await SecretStore(redis=client).rotate("acme")
            assert await store.signing("acme") == [rotated, *read]  # fresh again as soon as Redis answers
            assert any("tenant acme are read again" in r.getMessage() for r in caplog.records)

            redis_server.kill()
            assert await store.signing("acme") == [rotated, *read]
            assert len(outage_lines(caplog, "tenant acme")) == 2  # a new outage is said again
    finally:
        if not redis_server.running:
            redis_server.start()
        await client.aclose()


async def test_a_process_that_never_read_them_has_none_to_sign_with(away: aioredis.Redis) -> None:
    store = SecretStore(redis=away)
    with pytest.raises(SecretsUnavailable, match="tenant acme cannot be read"):
        await store.signing("acme")
    with pytest.raises(SecretsUnavailable, match="the operator"):
        await store.signing_ops()


async def test_what_a_step_read_is_remembered_to_sign_with(away: aioredis.Redis) -> None:
    store = SecretStore(redis=away)
    store.remember("acme", ["whsec_bmV3", "whsec_b2xk"])
    assert await store.signing("acme") == ["whsec_bmV3", "whsec_b2xk"]


async def test_the_operators_secret_too(redis_server: RedisServer, redis_url: str) -> None:
    client = connect(redis_url, retries=0)
    try:
        store = SecretStore(redis=client)
        read = await store.signing_ops()
        redis_server.kill()
        assert await store.signing_ops() == read
    finally:
        if not redis_server.running:
            redis_server.start()
        await client.aclose()


async def test_the_api_reads_stay_strict(away: aioredis.Redis) -> None:
    """What the API answers (GET /v1/signing-secret) is never a remembered secret: its read fails (a 503)."""
    store = SecretStore(redis=away)
    store.remember("acme", ["whsec_b2xk"])
    with pytest.raises(aioredis.ConnectionError):
        await store.live("acme")


async def test_the_tenants_kept_are_bounded_least_recently_used_first(away: aioredis.Redis) -> None:
    store = SecretStore(redis=away, remembered=2)
    store.remember("acme", ["whsec_YQ=="])
    store.remember("globex", ["whsec_Zw=="])
    assert await store.signing("acme") == ["whsec_YQ=="]  # used: globex is now the oldest
    store.remember("initech", ["whsec_aQ=="])
    assert await store.signing("acme") == ["whsec_YQ=="]
    assert await store.signing("initech") == ["whsec_aQ=="]
    with pytest.raises(SecretsUnavailable):
        await store.signing("globex")


async def test_a_tenant_keeps_its_newest_few_secrets(away: aioredis.Redis) -> None:
    store = SecretStore(redis=away)
    secrets = [f"whsec_{n}" for n in range(10)]
    store.remember("acme", secrets)
    assert await store.signing("acme") == secrets[:4]


async def test_a_read_apart_from_its_step_is_none_while_redis_is_away(
    redis: aioredis.Redis, away: aioredis.Redis
) -> None:
    """The worker's read after a cluster's step leased a webhook: the step is written already, so a master away
    must not fail it; the engine then signs with what it read last."""
    assert await read_apart(away.get(keys.secrets("acme"))) is None
    await SecretStore(redis=redis).live("acme")
    assert await read_apart(redis.get(keys.secrets("acme"))) == await redis.get(keys.secrets("acme"))


async def test_a_read_older_than_the_rotation_overlap_is_not_signed_with(away: aioredis.Redis) -> None:
    """Within the overlap, the current secret of the last read still signs whatever was rotated since; past it,
    it may not."""
    clock = Clock()
    store = SecretStore(redis=away, clock=clock.time)
    store.remember("acme", ["whsec_YQ=="])
    clock.now += ROTATION_OVERLAP_S
    assert await store.signing("acme") == ["whsec_YQ=="]
    clock.now += 1
    with pytest.raises(SecretsUnavailable):
        await store.signing("acme")
