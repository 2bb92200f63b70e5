"""``GET /v1/tasks`` and ``relay tasks`` with real processes: newest first, filters, tenancy, stable cursors."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.integration.test_api import assert_json_error
from tests.support import RELAY, ROOT, Api, wait_until


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    """A fresh Redis per test: each counts the whole list."""
    with relay_for_many_tests(redis_server) as fresh:
        yield fresh


def page(api: Api, key: str = "key-acme", **params: Any) -> dict[str, Any]:
    response = api.get("/v1/tasks", key=key, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def every(api: Api, key: str = "key-acme", **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = page(api, key, **params, **({"cursor": cursor} if cursor else {}))
        items += answer["items"]
        cursor = answer["next_cursor"]
        if cursor is None:
            return items


def test_a_tenant_lists_its_own_tasks_newest_first_and_an_operator_every_tenants(relay: Relay) -> None:
    api = relay.client
    acme = [api.submit("echo", n) for n in range(3)]
    globex = [api.submit("echo", n, key="key-globex") for n in range(2)]

    assert [t["id"] for t in every(api)] == [t["id"] for t in reversed(acme)]
    assert [t["id"] for t in every(api, "key-globex")] == [t["id"] for t in reversed(globex)]
    assert every(api, tenant="globex") == []  # a tenant's filter never widens its view
    everyone = every(api, "admin-token")
    assert {t["id"] for t in everyone} == {t["id"] for t in acme + globex}
    assert [t["id"] for t in every(api, "admin-token", tenant="globex")] == [t["id"] for t in reversed(globex)]
    # The ws_token is the capability to follow a task: its owner's alone.
    assert all(t["ws_token"] for t in every(api))
    assert all(t["ws_token"] is None for t in everyone)
    assert api.task(acme[0]["id"], key="admin-token")["ws_token"] is None
    assert api.task(acme[0]["id"])["ws_token"] == acme[0]["ws_token"]


def test_filters_by_status_kind_and_creation_time(relay: Relay) -> None:
    api = relay.client
    ok = api.submit("echo", 1)
    failed = api.submit("fail", {"message": "boom"})
    for task in (ok, failed):
        api.wait_task(task["id"])
    later = api.submit("echo", 2)
    api.wait_task(later["id"])

    assert [t["id"] for t in every(api, status="failed")] == [failed["id"]]
    assert [t["id"] for t in every(api, kind="echo")] == [later["id"], ok["id"]]
    assert [t["id"] for t in every(api, kind="echo", status="succeeded", since=later["created_at"])] == [later["id"]]
    # `until` is exclusive: the task created at that very time is not in the list.
    assert [t["id"] for t in every(api, until=later["created_at"])] == [failed["id"], ok["id"]]
    assert every(api, kind="sleep") == []


def test_pages_never_repeat_or_skip_a_task_while_tasks_are_being_submitted(relay: Relay) -> None:
    api = relay.client
    before = [api.submit("echo", n)["id"] for n in range(40)]
    stop = threading.Event()
    submitted_meanwhile: list[str] = []

    def keep_submitting() -> None:
        extra = Api(relay.api.url)
        try:
            while not stop.is_set() and len(submitted_meanwhile) < 200:
                submitted_meanwhile.append(extra.submit("echo", "meanwhile")["id"])
        finally:
            extra.close()

    submitter = threading.Thread(target=keep_submitting)
    submitter.start()
    try:
        wait_until(lambda: len(submitted_meanwhile) >= 3, message="submissions going on")
        answered = len(submitted_meanwhile)
        existing = set(before) | set(submitted_meanwhile[:answered])  # answered before the listing began
        seen: list[str] = []
        answer = page(api, limit=7)
        first_page_ids = [t["id"] for t in answer["items"]]
        seen += first_page_ids
        while answer["next_cursor"]:
            answer = page(api, limit=7, cursor=answer["next_cursor"])
            seen += [t["id"] for t in answer["items"]]
    finally:
        stop.set()
        submitter.join(30)

    assert len(seen) == len(set(seen))  # never twice
    assert existing <= set(seen)  # none skipped
    # Later pages hold only what is older than the first: nothing submitted while the pages were read.
    in_flight = set(submitted_meanwhile[answered : answered + 1])  # may have been stored before the first page
    assert len(submitted_meanwhile) > answered + 1  # submissions did go on while the pages were read
    assert set(seen) - set(first_page_ids) <= existing | in_flight


def test_a_filter_over_large_tasks_reads_a_little_of_each_and_finds_a_match_past_them(
    relay: Relay, redis_server: RedisServer
) -> None:
    api = relay.client
    oldest = api.submit("sleep", {"seconds": 0})
    large = [api.submit("echo", {"blob": "x" * 200_000}) for _ in range(40)]
    for task in (oldest, large[-1]):
        api.wait_task(task["id"])  # echo's result is its input: records of about 400 KB
    redis = redis_server.client()

    def sent() -> int:
        return int(redis.info("stats")["total_net_output_bytes"])

    try:
        before = sent()
        assert page(api, kind="nomatch", limit=500) == {"items": [], "next_cursor": None}
        assert sent() - before < 100_000  # the 41 records weigh 16 MB

        before = sent()
        assert [t["id"] for t in every(api, kind="sleep", limit=1)] == [oldest["id"]]
        assert [t["id"] for t in every(api, status="succeeded", kind="sleep")] == [oldest["id"]]
        assert sent() - before < 200_000
    finally:
        redis.close()


BAD_PARAMETERS = [
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"status": "sleeping"}, "status"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "nan:task_x"}, "cursor"),
    ({"since": "yesterday"}, "since"),
]


def test_bad_list_parameters_are_422s_that_name_the_parameter(relay: Relay) -> None:
    # One Relay for them all: each is one request that changes nothing.
    for params, field in BAD_PARAMETERS:
        detail = assert_json_error(relay.client.get("/v1/tasks", params=params), 422)
        assert f"query parameter {field}" in detail, (params, detail)


@pytest.mark.slow  # a dozen CLI processes
def test_relay_tasks_lists_and_shows(relay: Relay) -> None:
    api = relay.client
    done = api.wait_task(api.submit("echo", {"hello": "list"})["id"])
    failed = api.wait_task(api.submit("fail", {"message": "boom"})["id"])

    def relay_cli(*args: str, token: str = "key-acme") -> subprocess.CompletedProcess[str]:  # noqa: S107
        return subprocess.run(
            [*RELAY, "tasks", *args, "--url", relay.api.url, "--token", token],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    listed = relay_cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [failed["id"], done["id"]]
    failed_only = relay_cli("list", "--status", "failed")
    assert failed_only.returncode == 0, failed_only.stderr
    assert failed["id"] in failed_only.stdout
    assert done["id"] not in failed_only.stdout

    shown = relay_cli("show", done["id"], token="admin-token")
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout
    assert '"hello": "list"' in shown.stdout
    assert "task.completed" in shown.stdout
    missing = relay_cli("show", "task_missing")
    assert missing.returncode == 1
    assert "task_missing" in missing.stderr
    other_tenant = relay_cli("show", done["id"], token="key-globex")
    assert other_tenant.returncode == 1
    assert "404" in other_tenant.stderr
    assert datetime.fromisoformat(done["created_at"]).tzinfo == UTC
