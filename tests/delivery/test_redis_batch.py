"""Lua steps of one event-loop turn sent in one pipeline, against a real Redis: each caller gets its own reply or
its own error, a Redis that forgot the scripts or went away, and a caller that gives up, leave the others right."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from delivery.redis_batch import MAX_BATCH, batched
from tests.conftest import RedisServer

# Counts its calls in KEYS[1] and answers with its caller's ARGV[1].
ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"
# As ECHO, but refuses the caller whose ARGV[1] is "refuse" (and counts nothing for it).
REFUSE = """
if ARGV[1] == 'refuse' then return redis.error_reply('refused ' .. ARGV[1]) end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""
# As ECHO, after keeping Redis busy for ARGV[2] milliseconds (so that a trip is in flight for that long).
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  local now = redis.call('TIME')
until (now[1] * 1000000 + now[2]) - start >= tonumber(ARGV[2]) * 1000
redis.call('INCR', KEYS[1])
return ARGV[1]
"""
CALLERS = 20


def stats(client: redis.Redis) -> tuple[int, int]:
    """Redis's own count of the connections it accepted and of the reads it made from its clients."""
    info: dict[str, Any] = client.info("stats")
    return int(info["total_connections_received"]), int(info["total_reads_processed"])


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler ("Future exception was never retrieved" and the like)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def test_calls_of_one_turn_go_in_one_trip_and_each_gets_its_own_reply(
    redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    script = batched(redis).register_script(ECHO)
    assert await script(keys=["calls"], args=["alone"]) == b"alone"  # loads the script, opens a connection
    observer = redis_server.client()
    try:
        connections, reads = stats(observer)
        replies = await asyncio.gather(*(script(keys=["calls"], args=[f"caller-{i}"]) for i in range(CALLERS)))
        connections_after, reads_after = stats(observer)
    finally:
        observer.close()

    assert replies == [f"caller-{i}".encode() for i in range(CALLERS)]
    assert int(await redis.get("calls") or 0) == CALLERS + 1
    # Sent one by one, 20 calls in flight at once would take 20 connections and 20 of Redis's reads.
    assert connections_after == connections
    assert reads_after - reads - 1 <= 2  # one read as a rule (the second INFO's own read aside)


async def test_a_turn_longer_than_one_trip_carries_is_split_and_every_caller_answered(redis: aioredis.Redis) -> None:
    script = batched(redis).register_script(ECHO)
    count = 2 * MAX_BATCH + 3

    replies = await asyncio.gather(*(script(keys=["calls"], args=[i]) for i in range(count)))

    assert replies == [str(i).encode() for i in range(count)]
    assert int(await redis.get("calls") or 0) == count


async def test_a_step_that_fails_fails_only_its_own_caller(redis: aioredis.Redis) -> None:
    script = batched(redis).register_script(REFUSE)
    args = ["a", "b", "refuse", "c", "d"]

    replies = await asyncio.gather(*(script(keys=["calls"], args=[a]) for a in args), return_exceptions=True)

    refused = replies.pop(2)
    assert isinstance(refused, ResponseError)
    assert "refused" in str(refused)
    assert replies == [b"a", b"b", b"c", b"d"]
    assert int(await redis.get("calls") or 0) == 4


async def test_an_argument_redis_cannot_take_fails_only_its_own_caller(redis: aioredis.Redis) -> None:
    # Alone, such a call raises DataError before anything is sent; in a trip it must not take the others down.
    script = batched(redis).register_script(ECHO)
    args: list[Any] = ["a", None, "c"]

    replies = await asyncio.gather(*(script(keys=["calls"], args=[a]) for a in args), return_exceptions=True)

    assert isinstance(replies[1], DataError)
    assert replies[0] == b"a"
    assert replies[2] == b"c"
    assert int(await redis.get("calls") or 0) == 2


async def test_after_redis_forgets_its_scripts_every_call_still_runs_once(
    redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    echo = batched(redis).register_script(ECHO)
    refuse = batched(redis).register_script(REFUSE)
    await asyncio.gather(echo(keys=["warm"], args=["x"]), refuse(keys=["warm"], args=["x"]))
    sync = redis_server.client()
    try:
        sync.script_flush()  # as a restarted Redis without the scripts would be
        several = await asyncio.gather(*(echo(keys=["calls"], args=[f"caller-{i}"]) for i in range(5)))
        assert several == [f"caller-{i}".encode() for i in range(5)]

        sync.script_flush()
        assert await echo(keys=["calls"], args=["alone"]) == b"alone"

        # One script known again and the other not, in the same trip.
        sync.script_flush()
        sync.script_load(ECHO)
        mixed = await asyncio.gather(
            echo(keys=["calls"], args=["echo"]), refuse(keys=["calls"], args=["refuse-not"]), echo(keys=["calls"])
        )
    finally:
        sync.close()
    assert mixed == [b"echo", b"refuse-not", None]
    assert int(await redis.get("calls") or 0) == 5 + 1 + 3  # each step ran once: none twice, none lost


async def test_when_redis_dies_every_waiting_caller_gets_a_connection_error(
    redis: aioredis.Redis, redis_server: RedisServer, loop_errors: list[dict[str, Any]]
) -> None:
    script = batched(redis).register_script(SLOW)
    await script(keys=["calls"], args=["warm", 0])
    trip = [asyncio.ensure_future(script(keys=["calls"], args=[f"caller-{i}", 300])) for i in range(4)]
    await asyncio.sleep(0.1)  # the trip is in Redis, which is busy with its first step
    alone = asyncio.ensure_future(script(keys=["calls"], args=["alone", 300]))
    await asyncio.sleep(0)

    redis_server.kill()
    outcomes = await asyncio.wait_for(asyncio.gather(*trip, alone, return_exceptions=True), timeout=10)

    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes), outcomes
    gc.collect()
    assert loop_errors == []


async def test_a_caller_that_gives_up_leaves_the_others_of_its_trip_their_replies(
    redis: aioredis.Redis, loop_errors: list[dict[str, Any]]
) -> None:
    script = batched(redis).register_script(SLOW)
    await script(keys=["calls"], args=["warm", 0])

    async def call(name: str) -> Any:
        return await script(keys=["calls"], args=[name, 100])

    callers = [asyncio.create_task(call(f"caller-{i}")) for i in range(5)]
    await asyncio.sleep(0.05)  # the trip is in flight
    callers[1].cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=10)

    assert isinstance(outcomes.pop(1), asyncio.CancelledError)
    assert outcomes == [b"caller-0", b"caller-2", b"caller-3", b"caller-4"]
    assert int(await redis.get("calls") or 0) == 1 + 5  # a step already sent is not taken back
    gc.collect()
    assert loop_errors == []


async def test_a_caller_that_gave_up_on_a_trip_that_then_fails_leaves_no_unretrieved_error(
    redis: aioredis.Redis, redis_server: RedisServer, loop_errors: list[dict[str, Any]]
) -> None:
    script = batched(redis).register_script(SLOW)
    await script(keys=["calls"], args=["warm", 0])
    trip = [asyncio.ensure_future(script(keys=["calls"], args=[f"caller-{i}", 300])) for i in range(3)]
    await asyncio.sleep(0)  # the next call is a turn later: a trip of its own
    alone = asyncio.ensure_future(script(keys=["calls"], args=["alone", 300]))
    await asyncio.sleep(0.1)
    trip[0].cancel()
    alone.cancel()

    redis_server.kill()
    outcomes = await asyncio.wait_for(asyncio.gather(*trip, alone, return_exceptions=True), timeout=10)

    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert isinstance(outcomes[3], asyncio.CancelledError)
    assert all(isinstance(outcome, RedisConnectionError) for outcome in outcomes[1:3]), outcomes
    await asyncio.sleep(0.5)  # the lone call's own retries end with an error nobody waits for any more
    gc.collect()
    assert loop_errors == []


async def test_plain_commands_share_the_trip_of_their_turn_with_scripts(
    redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    batcher = batched(redis)
    script = batcher.register_script(ECHO)
    await redis.rpush("log", "a", "b", "c")
    await script(keys=["calls"], args=["warm"])  # loads the script, opens a connection
    observer = redis_server.client()
    try:
        connections, reads = stats(observer)
        got = await asyncio.gather(
            batcher.command("LRANGE", "log", 1, -1),
            script(keys=["calls"], args=["step"]),
            batcher.command("GET", "missing"),
            *(batcher.command("INCR", "counter") for _ in range(CALLERS)),
        )
        connections_after, reads_after = stats(observer)
    finally:
        observer.close()

    # Each reply as redis-py parses that command's alone.
    assert got[:3] == [[b"b", b"c"], b"step", None]
    assert sorted(got[3:]) == list(range(1, CALLERS + 1))
    assert connections_after == connections
    assert reads_after - reads - 1 <= 2


async def test_a_group_runs_in_its_order_in_one_trip_even_where_the_turn_is_split(redis: aioredis.Redis) -> None:
    batcher = batched(redis)
    # Enough single calls before and after to split the turn into several trips, which run side by side.
    before = [batcher.command("INCR", "noise") for _ in range(MAX_BATCH - 2)]
    group = batcher.commands(("DEL", "list"), *(("RPUSH", "list", i) for i in range(10)), ("LRANGE", "list", 0, -1))
    after = [batcher.command("INCR", "noise") for _ in range(MAX_BATCH)]

    replies = await group
    await asyncio.gather(*before, *after)

    assert replies[1:11] == list(range(1, 11))
    assert replies[-1] == [str(i).encode() for i in range(10)]
    assert int(await redis.get("noise") or 0) == 2 * MAX_BATCH - 2


async def test_a_group_with_a_failing_command_raises_for_its_caller_alone(redis: aioredis.Redis) -> None:
    batcher = batched(redis)
    await redis.set("text", "not a list")

    bad, good, single = await asyncio.gather(
        batcher.commands(("INCR", "ran"), ("LPUSH", "text", "x"), ("INCR", "ran")),
        batcher.commands(("INCR", "other"), ("GET", "other")),
        batcher.command("INCR", "other"),
        return_exceptions=True,
    )

    assert isinstance(bad, ResponseError)
    assert "WRONGTYPE" in str(bad)
    assert int(await redis.get("ran") or 0) == 2  # not a transaction: the commands around the failure ran
    assert good == [1, b"1"]
    assert single == 2


async def test_a_group_with_an_argument_redis_cannot_take_fails_alone(redis: aioredis.Redis) -> None:
    batcher = batched(redis)

    bad, good = await asyncio.gather(
        batcher.commands(("SET", "a", "1"), ("SET", "b", None)),
        batcher.command("SET", "c", "1"),
        return_exceptions=True,
    )

    assert isinstance(bad, DataError)
    assert good is True
    assert await redis.get("a") is None  # nothing of the refused group was sent
    assert await redis.get("c") == b"1"


async def test_an_empty_group_is_refused() -> None:
    with pytest.raises(ValueError, match="no commands"):
        batched(aioredis.Redis()).commands()
