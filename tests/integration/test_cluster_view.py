"""GET /v1/ops/cluster and `relay cluster` on a standalone Redis: one node holding everything, the processes alive."""

from __future__ import annotations

import os
import subprocess

from tests.integration.conftest import StartCluster
from tests.support import RELAY, ROOT, wait_until


def test_the_operator_sees_one_node_its_partitions_and_work_owed_and_the_processes_alive(
    start_cluster: StartCluster,
) -> None:
    relay = start_cluster()
    api = relay.client
    # Owed work: a task scheduled an hour ahead stays owed (and counted) while the view is read.
    scheduled = api.submit("echo", {"n": 1}, body={"delay_s": 3600})
    assert api.get("/v1/ops/cluster").status_code == 403  # a tenant's key

    def viewed() -> dict | None:
        answer = api.get("/v1/ops/cluster", key="admin-token")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body if body["workers"] and body["api_nodes"] else None

    view = wait_until(viewed, message="the worker's and the API's heartbeats")
    assert view["mode"] == "standalone"
    [node] = view["nodes"]
    assert node["role"] == "master"
    assert node["up"] is True
    assert node["slots"] == 16384
    assert node["partitions"] == view["partitions"] >= 1
    assert node["keys"] > 0
    assert node["memory_bytes"] > 0
    assert node["owed_tasks"] >= 1
    assert len(view["workers"]) == 1
    assert len(view["api_nodes"]) == 1

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env |= {"RELAY_URL": relay.api.url, "RELAY_ADMIN_TOKEN": "admin-token", "COLUMNS": "80", "NO_COLOR": "1"}
    shown = subprocess.run(
        [*RELAY, "cluster"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"standalone: 1 master, 0 replicas, {view['partitions']} partition")
    assert any(node["address"] in line and "master" in line for line in lines)
    assert lines[-2].startswith("workers alive: 1 (")
    assert lines[-1].startswith("API nodes alive: 1 (")
    assert max(len(line) for line in lines) <= 80
    assert api.post(f"/v1/tasks/{scheduled['id']}/cancel").status_code == 202
