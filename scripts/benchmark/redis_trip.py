"""What one trip to Redis costs the client: CPU µs per sequential trip through Relay's redis-py client.

python -m scripts.benchmark.redis_trip [-n 5000]

Starts a Redis of its own (no persistence) and times, one trip after another on uvloop, a Lua step the size of
Relay's (EVALSHA with 2 keys and 20 arguments): alone, in a pipeline of one and of four, and the same bytes
written and read on a bare pooled connection (what is left when redis-py's command and pipeline layers are
taken away). The CPU is this process's (``time.process_time``), so Redis's own time is not in it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from delivery.redis_client import connect
from scripts.benchmark.stack import new_loop
from service.processes import RedisServer

STEP = "return ARGV[1]"
ARGS = [f"argument-{i}" for i in range(20)]


async def measure(url: str, trips: int) -> dict[str, float]:
    redis = connect(url, command_timeout_s=2.0)
    sha = await redis.script_load(STEP)
    command = ["EVALSHA", sha, 2, "relay:{task_a}:one", "relay:{task_a}:two", *ARGS]

    async def alone() -> None:
        await redis.execute_command(*command)

    def pipeline(size: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            pipe = redis.pipeline(transaction=False)
            for _ in range(size):
                pipe.execute_command(*command)
            await pipe.execute(raise_on_error=False)

        return run

    def bare(size: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            connection = await redis.connection_pool.get_connection()
            try:
                await connection.send_packed_command(connection.pack_commands([command] * size), check_health=False)
                for _ in range(size):
                    await connection.read_response()
            finally:
                await redis.connection_pool.release(connection)

        return run

    cases = {
        "EVALSHA alone": alone,
        "pipeline of 1": pipeline(1),
        "pipeline of 4": pipeline(4),
        "bare connection, 1": bare(1),
        "bare connection, 4": bare(4),
    }
    results: dict[str, float] = {}
    try:
        for name, trip in cases.items():
            for _ in range(min(500, trips)):  # warm-up
                await trip()
            started = time.process_time()
            for _ in range(trips):
                await trip()
            results[name] = (time.process_time() - started) / trips * 1e6
    finally:
        await redis.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--trips", type=int, default=5000, help="trips per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-trip-") as workdir:
        server = RedisServer(data_dir=Path(workdir), appendonly=False)
        server.start()
        try:
            loop = new_loop()
            try:
                results = loop.run_until_complete(measure(server.url, args.trips))
            finally:
                loop.close()
        finally:
            server.stop()
    print(f"client CPU per sequential trip, {args.trips} trips each (µs):")
    for name, micros in results.items():
        print(f"  {name:<20} {micros:7.1f}")


if __name__ == "__main__":
    main()
