"""What a bench run measures besides time: CPU seconds per group of processes (and per task), and percentiles."""

from __future__ import annotations

import contextlib
import time

import psutil

from scripts.benchmark.stack import Service, Stack

# The webhook run's columns; the WebSocket run has its own (scripts.benchmark.ws.control.CpuMeter).
GROUPS = ("api", "worker", "redis", "receiver", "client", "other")
# The service's own CPU: both runs have these columns (the receivers and load generators are not the service).
SERVICE_GROUPS = ("api", "worker", "redis")
# The webhook run's columns when the task queue has a Redis of its own (``--cluster``): the broker is counted
# apart from the storage, so that a standalone Redis and a cluster are set side by side on what differs.
BROKER_GROUPS = (*SERVICE_GROUPS, "broker", "receiver", "client", "other")
# A node of a Redis Cluster is a service named ``redis-<port>``: counted under ``redis`` and reported alone too.
NODE_PREFIX = "redis-"


class CpuMeter:
    """CPU seconds (user + system) of each group of processes, between two readings.

    ``groups`` names the columns; ``group(service)`` maps a started service to its column, and this process
    (the load generator) counts as ``self_group``; ``other`` is the rest of the box.
    """

    groups: tuple[str, ...] = GROUPS
    self_group = "client"

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._self = psutil.Process()

    @staticmethod
    def group(service: str) -> str:
        return service

    def read(self) -> dict[str, float]:
        totals = dict.fromkeys(self.groups, 0.0)
        for name, service in self._stack.services.items():
            totals[self.group(name)] += service_cpu_s(service)
        t = self._self.cpu_times()
        totals[self.self_group] = t.user + t.system
        # Everything else busy on the box (other people's tests, py-spy): figures are noisy when this is high.
        box = psutil.cpu_times()
        busy = box.user + box.nice + box.system + box.irq + box.softirq + getattr(box, "steal", 0.0)
        totals["other"] = busy - sum(totals[g] for g in self.groups if g != "other")
        return totals

    @staticmethod
    def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 3) for k in before}


class BrokerCpuMeter(CpuMeter):
    """The webhook run's columns with the broker's Redis apart (:data:`BROKER_GROUPS`); the nodes of a Redis Cluster
    add up under ``redis``, and each is also read alone, under its service's name (``redis-<port>``)."""

    groups = BROKER_GROUPS

    @staticmethod
    def group(service: str) -> str:
        return "redis" if service.startswith(NODE_PREFIX) else service

    def read(self) -> dict[str, float]:
        totals = super().read()
        for name, service in self._stack.services.items():
            if name.startswith(NODE_PREFIX):
                totals[name] = service_cpu_s(service)
        return totals


def service_cpu_s(service: Service) -> float:
    """CPU seconds (user + system) a service's processes have used so far."""
    total = 0.0
    for proc in service.tree():
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def cpu_per_task(cpu_s: dict[str, float], tasks: int) -> dict[str, int]:
    """CPU µs per task of each group, and ``service``: the API, the worker and Redis together."""
    per_task = {k: round(v / max(1, tasks) * 1e6) for k, v in cpu_s.items()}
    per_task["service"] = round(sum(cpu_s[g] for g in SERVICE_GROUPS) / max(1, tasks) * 1e6)
    return per_task


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# A fixed piece of pure-Python work, timed in CPU seconds: how fast this box runs Python right now.
_PROBE_STEPS = 2_000_000


def box_speed() -> float:
    """Million loop steps per CPU second, best of three short tries (about 0.3 s in all).

    On a shared machine the same code runs at different speeds from one minute to the next (seen here: the same
    loop 1.66x slower at times, with nothing else running on the box), and every figure of a run moves with it.
    A run reports this before and after its phases, so that two runs can be told apart by the box they ran on.
    """
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        total = 0
        for step in range(_PROBE_STEPS):
            total += step
        best = min(best, time.process_time() - started)
    return round(_PROBE_STEPS / max(best, 1e-9) / 1e6, 1)
