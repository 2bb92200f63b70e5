"""Figures that span every partition (counters, histograms, set sizes), read in one pipeline and added up."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from delivery import keys


def add_hashes(hashes: Sequence[Mapping[bytes, bytes]]) -> dict[bytes, bytes]:
    """The field-by-field sum of counter hashes (integers stay integers; a float field, a histogram's sum, adds as
    a float)."""
    if len(hashes) == 1:
        return dict(hashes[0])
    totals: dict[bytes, int | float] = {}
    for one in hashes:
        for field, raw in one.items():
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            value: int | float
            try:
                value = int(text)
            except ValueError:
                value = float(text)
            totals[field] = totals.get(field, 0) + value
    return {k: (str(v) if isinstance(v, int) else repr(v)).encode() for k, v in totals.items()}


async def gather(redis: aioredis.Redis, reads: Sequence[Callable[[keys.Partition], tuple[str, ...]]]) -> list[Any]:
    """For each read (``partition -> (command, key)``, a command of HGETALL, ZCARD or a ``ZCOUNT <key> <min>
    <max>`` given as extra arguments after the key), its value over every partition: hashes added field by field,
    numbers added up. One pipeline, which a cluster client splits by node."""
    parts = keys.partitions()
    async with redis.pipeline(transaction=False) as pipe:
        for partition in parts:
            for read in reads:
                command, *args = read(partition)
                pipe.execute_command(command, *args)
        replies = await pipe.execute()
    out: list[Any] = []
    for i, read in enumerate(reads):
        values = replies[i :: len(reads)]
        command = read(parts[0])[0]
        if command == "HGETALL":
            out.append(add_hashes([v or {} for v in values]))
        else:
            out.append(sum(int(v) for v in values))
    return out
