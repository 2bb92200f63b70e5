"""The webhook sender alone: client CPU per signed webhook, 64 in flight, against the bench receiver.

python -m scripts.benchmark.webhooks.sender PORT [-n 10000]

Start the receiver first (``python -m scripts.benchmark.webhooks.receiver PORT HANG_PORT DEAD_PORT``). Runs on
uvloop, as the worker does; the CPU is this process's (user + system, ``resource.getrusage``) over the timed
webhooks, after a warm-up that opens the connections.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import msgspec

from delivery.signing import generate_secret
from delivery.webhook import WebhookSender, create_client
from scripts.benchmark.stack import new_loop

IN_FLIGHT = 64
WARM_UP = 500
TIMEOUT_S = 10.0


async def _post(sender: WebhookSender, url: str, count: int, secret: str) -> int:
    """Send ``count`` webhooks, IN_FLIGHT at a time; how many failed."""
    encode = msgspec.json.Encoder().encode
    queue = iter(range(count))
    failed = 0

    async def lane() -> None:
        nonlocal failed
        for index in queue:
            task_id = f"task_{index:08d}"
            body = encode({"type": "task.completed", "task_id": task_id, "data": {"status": "succeeded"}})
            result = await sender.send(url, f"evt_{index}", body, [secret])
            failed += not result.ok

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return failed


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(port: int, count: int) -> None:
    client = create_client(timeout_s=TIMEOUT_S, allow_private=True)
    sender = WebhookSender(client=client, allow_private=True, user_agent="relay-bench")
    url = f"http://127.0.0.1:{port}/hook"
    secret = generate_secret()
    try:
        await _post(sender, url, WARM_UP, secret)
        cpu, wall = _cpu_s(), time.perf_counter()
        failed = await _post(sender, url, count, secret)
        cpu, wall = _cpu_s() - cpu, time.perf_counter() - wall
    finally:
        await client.aclose()
    print(
        f"{count} webhooks, {failed} failed, {cpu / count * 1e6:.0f} µs CPU per webhook, {count / wall:.0f} webhooks/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("-n", type=int, default=10_000, help="webhooks timed (default: %(default)s)")
    args = parser.parse_args()
    new_loop().run_until_complete(run(args.port, args.n))


if __name__ == "__main__":
    main()
