"""What the fault tests on a cluster share: the tenants, a client that retries with its Idempotency-Key, Relay's
settings on a test cluster, and the count of what became of every accepted task."""

from __future__ import annotations

import threading
import time
import uuid
from typing import cast

import httpx

from tests.cluster import LocalCluster
from tests.support import Api, Outcome, Receiver, count_outcome, wait_until

TENANTS = ("acme", "globex", *(f"t{n}" for n in range(6)))
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)
TEST_KINDS = "tests.kinds_for_tests"
# How long a client keeps retrying one submission (503s and refused connections while the cluster fails over).
SUBMIT_PATIENCE_S = 40.0


class Submitter(threading.Thread):
    """Submits tasks one after another, each with its own Idempotency-Key, retrying 503s and connection errors
    with that key until it is answered 202, as a careful client does; keeps the ids it was answered."""

    def __init__(self, base_url: str, webhook: str, *, count: int) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.webhook = webhook
        self.count = count
        self.accepted: list[str] = []
        self.retries = 0
        self.statuses: list[int] = []
        self.gave_up = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for n in range(self.count):
                tenant = TENANTS[n % len(TENANTS)]
                body = {"kind": "echo", "input": {"n": n}, "webhook": {"url": self.webhook}}
                headers = {"Authorization": f"Bearer key-{tenant}", "Idempotency-Key": uuid.uuid4().hex}
                deadline = time.monotonic() + SUBMIT_PATIENCE_S
                while True:
                    try:
                        answer = client.post("/v1/tasks", json=body, headers=headers)
                        self.statuses.append(answer.status_code)
                        if answer.status_code == 202:
                            self.accepted.append(answer.json()["id"])
                            break
                        assert answer.status_code == 503, answer.text  # never a 500 or another refusal
                    except httpx.TransportError:
                        pass
                    self.retries += 1
                    if time.monotonic() > deadline:
                        self.gave_up += 1
                        break
                    time.sleep(0.1)
                time.sleep(0.01)


def cluster_env(cluster: LocalCluster, rabbitmq_url: str, **extra: str) -> dict[str, str]:
    """Relay's settings on the test cluster: 16 partitions, the tenants above, RabbitMQ as the broker."""
    return {
        "RELAY_REDIS_MODE": "cluster",
        "RELAY_REDIS_URL": cluster.url,
        "RELAY_BROKER_URL": rabbitmq_url,
        "RELAY_PARTITIONS": "16",
        "RELAY_API_KEYS": API_KEYS,
        **extra,
    }


def by_tenant(accepted: list[str]) -> dict[str, list[str]]:
    """The accepted task ids of each tenant (the submitters take the tenants in turn)."""
    groups: dict[str, list[str]] = {}
    for n, task_id in enumerate(accepted):
        groups.setdefault(TENANTS[n % len(TENANTS)], []).append(task_id)
    return groups


def outcome_of(api: Api, groups: dict[str, list[str]], receiver: Receiver | None) -> Outcome:
    """What became of every tenant's tasks and webhooks, added up."""
    total = Outcome()
    for tenant, ids in groups.items():
        one = count_outcome(api, ids, receiver=receiver, name=tenant, key=f"key-{tenant}")
        for name in ("accepted", "completed", "failed", "cancelled", "lost", "not_ended_once"):
            setattr(total, name, getattr(total, name) + getattr(one, name))
        total.webhooks_missing += one.webhooks_missing
        total.webhooks_duplicated += one.webhooks_duplicated
    return total


def all_ended(api: Api, groups: dict[str, list[str]], *, timeout_s: float = 120) -> Outcome:
    """Waits until every accepted task (with no webhook) has ended; what became of them."""
    return cast(
        Outcome,
        wait_until(
            lambda: (o := outcome_of(api, groups, None)) and o.lost == 0 and o,
            timeout_s=timeout_s,
            message="every accepted task ended",
        ),
    )


def all_delivered(api: Api, groups: dict[str, list[str]], receiver: Receiver, *, timeout_s: float = 120) -> Outcome:
    """Waits until every accepted task has ended and its webhook arrived; what became of them."""
    return cast(
        Outcome,
        wait_until(
            lambda: (o := outcome_of(api, groups, receiver)) and o.lost == 0 and o.webhooks_missing == 0 and o,
            timeout_s=timeout_s,
            message="every accepted task completed and its webhook delivered",
        ),
    )
