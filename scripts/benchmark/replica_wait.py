"""What a replica's acknowledgement costs a submission on a Redis Cluster: submit latency with no replicas (answered
after the step) and with one replica per master (answered after the step and a WAIT on its connection).

``python -m scripts.benchmark.replica_wait [-n 1000] [--rounds 2]`` from the repository's root: for each round, a
3-master cluster without replicas, then one with a replica each (the test suite's LocalCluster, which starts
replicas), an API process on it with RabbitMQ (a vhost of its own on 127.0.0.1:5672) and no worker, and ``-n``
keyed submissions one at a time. Prints p50 and p99 of each.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

import httpx

from service.processes import free_port
from tests import rabbitmq
from tests.cluster import LocalCluster

RELAY = os.path.join(os.path.dirname(sys.executable), "relay")


def measure(replicas: int, count: int) -> tuple[float, float]:
    with (
        rabbitmq.vhost("relay-bench") as broker_url,
        LocalCluster(masters=3, replicas_per_master=replicas) as cluster,
    ):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env |= {
            "RELAY_REDIS_MODE": "cluster",
            "RELAY_REDIS_URL": cluster.url,
            "RELAY_BROKER_URL": broker_url,
            "RELAY_API_KEYS": "acme=key-acme",
            "RELAY_PARTITIONS": "16",
        }
        api = subprocess.Popen(
            [RELAY, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            with httpx.Client(base_url=base, headers={"Authorization": "Bearer key-acme"}) as client:
                for n in range(100):  # warm up
                    client.post("/v1/tasks", json={"kind": "echo", "input": n})
                latencies = []
                for n in range(count):
                    started = time.perf_counter()
                    answer = client.post(
                        "/v1/tasks",
                        json={"kind": "echo", "input": n},
                        headers={"Idempotency-Key": uuid.uuid4().hex},
                    )
                    latencies.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 202:
                        raise RuntimeError(f"submission answered {answer.status_code}: {answer.text}")
            latencies.sort()
            return statistics.median(latencies), latencies[int(len(latencies) * 0.99)]
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="submissions measured in each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternated")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for replicas in (0, 1):
            p50, p99 = measure(replicas, args.n)
            print(f"replicas per master {replicas}: submit latency p50 {p50:.2f} ms, p99 {p99:.2f} ms ({args.n} keyed)")


if __name__ == "__main__":
    main()
