"""The HTTP API as a client sees it: task lifecycle, tenants and auth, idempotency, limits, validation, the address
guard, signing secrets, and the operational endpoints."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.processes import free_port
from tests.conftest import RedisServer
from tests.integration.conftest import Relay, StartRelay, relay_for_many_tests
from tests.support import Api, Receiver, wait_until, webhook_attempts

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def utc(value: str) -> datetime:
    assert RFC3339_UTC.match(value), f"{value!r} is not RFC 3339 in UTC"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_json_error(response: httpx.Response, status: int | tuple[int, ...]) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert detail.strip()
    return detail


def post_task(api: Api, body: Any, *, key: str | None = "key-acme", **kwargs: Any) -> httpx.Response:
    return api.post("/v1/tasks", json=body, key=key, **kwargs)


@pytest.fixture(scope="class")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    """One API and one worker with the test settings, shared by a class of tests that use only their own tasks."""
    with relay_for_many_tests(redis_server) as relay:
        yield relay


class TestWithTheTestSettings:
    def test_a_task_goes_queued_running_succeeded_with_times_events_and_deliveries(
        self, shared: Relay, receiver: Receiver
    ) -> None:
        api = shared.client
        submitted = api.submit("sleep", {"seconds": 1}, webhook=receiver.url("/hook"))

        assert submitted["status"] == "queued"
        assert submitted["id"].startswith("task_")
        assert submitted["kind"] == "sleep"
        assert submitted["input"] == {"seconds": 1}
        # The final types unless it lists its own.
        assert submitted["webhook"] == {
            "url": receiver.url("/hook"),
            "events": ["task.completed", "task.failed", "task.cancelled"],
        }
        assert submitted["result"] is None
        assert submitted["started_at"] is None
        assert submitted["finished_at"] is None
        assert isinstance(submitted["ws_token"], str)
        assert submitted["ws_token"]
        created = utc(submitted["created_at"])

        running = wait_until(lambda: (t := api.task(submitted["id"]))["status"] == "running" and t, timeout_s=10)
        assert utc(running["started_at"]) >= created
        assert running["finished_at"] is None

        done = api.wait_task(submitted["id"])
        assert done["status"] == "succeeded"
        assert done["result"] == {"slept": 1.0}
        assert done["error"] is None
        assert done["ws_token"] == submitted["ws_token"]
        assert (utc(done["finished_at"]) - utc(done["started_at"])).total_seconds() >= 0.9

        response = api.get(f"/v1/tasks/{submitted['id']}/events")
        assert response.status_code == 200
        assert set(response.json()) == {"events", "next_after_seq"}
        assert response.json()["next_after_seq"] is None
        log = response.json()["events"]
        assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
        assert log[-1]["type"] == "task.completed"
        assert all(e["task_id"] == submitted["id"] and e["id"].startswith("evt_") for e in log)
        assert [utc(e["created_at"]) for e in log] == sorted(utc(e["created_at"]) for e in log)

        later = api.get(f"/v1/tasks/{submitted['id']}/events", params={"after_seq": 1}).json()
        assert later["events"] == log[1:]
        assert later["next_after_seq"] is None
        assert api.get(f"/v1/tasks/{submitted['id']}/events", params={"after_seq": len(log)}).json()["events"] == []

        (hook,) = receiver.wait_for("/hook")
        attempts = wait_until(
            lambda: (a := api.get(f"/v1/tasks/{submitted['id']}/deliveries").json())["attempts"] and a
        )
        assert attempts["next_cursor"] is None
        (attempt,) = attempts["attempts"]
        assert attempt["event_id"] == log[-1]["id"] == hook.headers["webhook-id"]
        assert attempt["channel"] == "webhook"
        assert attempt["attempt"] == 1
        assert attempt["outcome"] == "delivered"
        assert attempt["status_code"] == 200
        assert attempt["error"] is None
        assert attempt["duration_ms"] > 0
        utc(attempt["at"])

    def test_a_negative_after_seq_is_a_422(self, shared: Relay) -> None:
        task = shared.client.submit("echo", 1)
        assert_json_error(shared.client.get(f"/v1/tasks/{task['id']}/events", params={"after_seq": -1}), 422)

    def test_another_tenant_gets_404_for_a_task_its_events_and_deliveries(self, shared: Relay) -> None:
        task = shared.client.submit("echo", {"secret": "acme's"})
        shared.client.wait_task(task["id"])

        for path in (f"/v1/tasks/{task['id']}", f"/v1/tasks/{task['id']}/events", f"/v1/tasks/{task['id']}/deliveries"):
            assert shared.client.get(path, key="key-acme").status_code == 200
            assert shared.client.get(path, key="admin-token").status_code == 200  # operators see every tenant's
            detail = assert_json_error(shared.client.get(path, key="key-globex"), 404)
            assert "acme's" not in detail
            # The same answer as for an id that does not exist at all.
            missing = path.replace(task["id"], "task_doesnotexist")
            assert_json_error(shared.client.get(missing, key="key-acme"), 404)

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer key-wrong"},
            {"Authorization": "key-acme"},
            {"Authorization": "Basic a2V5"},
            {"Authorization": "Bearer"},
        ],
        ids=["none", "wrong-key", "no-scheme", "basic", "empty-bearer"],
    )
    def test_a_missing_or_wrong_key_gets_401_with_a_detail(self, shared: Relay, headers: dict[str, str]) -> None:
        api = shared.client
        assert_json_error(post_task(api, {"kind": "echo", "input": 1}, key=None, headers=headers), 401)
        assert_json_error(api.get("/v1/tasks/task_x", key=None, headers=headers), 401)
        assert_json_error(api.get("/v1/signing-secret", key=None, headers=headers), 401)

    def test_the_admin_token_cannot_submit_tasks(self, shared: Relay) -> None:
        response = post_task(shared.client, {"kind": "echo", "input": 1}, key="admin-token")
        assert_json_error(response, (401, 403))

    def test_the_same_idempotency_key_returns_the_same_task_and_runs_it_once(
        self, shared: Relay, receiver: Receiver
    ) -> None:
        api = shared.client
        body = {"kind": "echo", "input": {"order": 7}, "webhook": {"url": receiver.url("/once")}}
        first = post_task(api, body, headers={"Idempotency-Key": "order-7"})
        again = post_task(api, body, headers={"Idempotency-Key": "order-7"})
        other = post_task(api, body, headers={"Idempotency-Key": "order-8"})

        assert first.status_code == again.status_code == other.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert other.json()["id"] != first.json()["id"]
        api.wait_task(first.json()["id"])
        api.wait_task(other.json()["id"])
        # Once the task has finished, the key still answers exactly as the first submission was answered.
        after = post_task(api, body, headers={"Idempotency-Key": "order-7"})
        assert after.json() == first.json()
        assert after.json()["status"] == "queued"
        receiver.wait_for("/once", 2)
        # Each task ended once and owed one webhook: the attempt logs hold one delivered attempt each.
        for task_id in (first.json()["id"], other.json()["id"]):
            assert [a["outcome"] for a in webhook_attempts(api, task_id)] == ["delivered"]
        assert sorted(h.json()["task_id"] for h in receiver.on("/once")) == sorted(
            [first.json()["id"], other.json()["id"]]
        )

    def test_an_idempotency_key_reused_with_another_body_is_a_422_and_the_same_body_keeps_its_answer(
        self, shared: Relay
    ) -> None:
        api = shared.client
        body = {"kind": "echo", "input": {"order": 9, "lines": [1, 2]}}
        first = post_task(api, body, headers={"Idempotency-Key": "order-9"})
        # The same request written otherwise (key order, spacing) is the same request.
        same = api.post(
            "/v1/tasks",
            content=b'{"input": {"lines": [1,2], "order": 9},   "kind": "echo"}',
            headers={"Idempotency-Key": "order-9", "content-type": "application/json"},
        )
        other = post_task(api, {"kind": "echo", "input": {"order": 10}}, headers={"Idempotency-Key": "order-9"})

        assert first.status_code == same.status_code == 202
        assert same.json() == first.json()
        assert_json_error(other, 422)
        assert "Idempotency-Key was used for another request" in other.json()["detail"]
        api.wait_task(first.json()["id"])
        assert post_task(api, body, headers={"Idempotency-Key": "order-9"}).json() == first.json()

    def test_an_idempotency_key_belongs_to_one_tenant(self, shared: Relay) -> None:
        api = shared.client
        acme = post_task(api, {"kind": "echo", "input": "a"}, headers={"Idempotency-Key": "shared-key"})
        globex = post_task(
            api, {"kind": "echo", "input": "g"}, key="key-globex", headers={"Idempotency-Key": "shared-key"}
        )

        assert acme.status_code == globex.status_code == 202
        assert acme.json()["id"] != globex.json()["id"]
        assert api.wait_task(acme.json()["id"])["result"] == "a"
        assert api.wait_task(globex.json()["id"], key="key-globex")["result"] == "g"

    @pytest.mark.parametrize(
        ("body", "mentions"),
        [
            ({"kind": "no-such-kind", "input": 1}, "no-such-kind"),
            ({"kind": "sleep", "input": {"seconds": "x"}}, "sleep"),
            ({"kind": "sleep", "input": {"seconds": -1}}, "sleep"),
            ({"kind": "sleep", "input": {}}, "sleep"),
            ({"kind": "echo", "input": 1, "webhook": {"url": "ftp://x"}}, "webhook"),
            ({"kind": "echo", "input": 1, "webhook": {"url": "/relative"}}, "webhook"),
            ({"kind": "echo", "input": 1, "webhook": {"url": "http://"}}, "webhook"),
            ({"kind": "echo", "input": 1, "bogus": True}, "bogus"),
            ({"kind": "echo", "input": 1, "webhook": {"url": "http://127.0.0.1:9/", "secret": "x"}}, "secret"),
            ({"input": 1}, "kind"),
        ],
        ids=[
            "unknown-kind",
            "seconds-not-a-number",
            "seconds-negative",
            "seconds-missing",
            "ftp-url",
            "relative-url",
            "url-without-host",
            "unknown-field",
            "unknown-webhook-field",
            "no-kind",
        ],
    )
    def test_a_submission_that_does_not_fit_gets_422_with_a_detail(
        self, shared: Relay, body: dict[str, Any], mentions: str
    ) -> None:
        response = post_task(shared.client, body)
        detail = assert_json_error(response, 422)
        assert mentions in detail + " " + str(response.json().get("extra", ""))

    def test_private_callbacks_are_accepted_when_allowed(self, shared: Relay, receiver: Receiver) -> None:
        task = shared.client.submit("echo", "local", webhook=f"http://127.0.0.1:{receiver.port}/local")
        (hook,) = receiver.wait_for("/local")
        assert hook.json()["task_id"] == task["id"]

    def test_a_rotated_signing_secret_signs_beside_the_old_one(self, shared: Relay, receiver: Receiver) -> None:
        api = shared.client
        old = api.get("/v1/signing-secret").json()["secret"]
        globex_secret = api.get("/v1/signing-secret", key="key-globex").json()["secret"]
        assert old.startswith("whsec_")
        assert globex_secret.startswith("whsec_")
        assert globex_secret != old
        assert api.get("/v1/signing-secret").json()["secret"] == old  # stable until rotated

        rotated = api.post("/v1/signing-secret/rotate")
        assert rotated.status_code == 200
        new = rotated.json()["secret"]
        assert new.startswith("whsec_")
        assert new not in (old, globex_secret)
        assert api.get("/v1/signing-secret").json()["secret"] == new
        assert api.get("/v1/signing-secret", key="key-globex").json()["secret"] == globex_secret

        api.submit("echo", "signed twice", webhook=receiver.url("/acme"))
        api.submit("echo", "globex", webhook=receiver.url("/globex"), key="key-globex")
        (hook,) = receiver.wait_for("/acme")
        (globex_hook,) = receiver.wait_for("/globex")

        signatures = hook.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
        assert all(s.startswith("v1,") for s in signatures)
        for secret in (old, new):
            assert Webhook(secret).verify(hook.body, hook.headers)["data"]["result"] == "signed twice"
        with pytest.raises(WebhookVerificationError):
            Webhook(globex_secret).verify(hook.body, hook.headers)

        assert len(globex_hook.headers["webhook-signature"].split(" ")) == 1
        Webhook(globex_secret).verify(globex_hook.body, globex_hook.headers)
        for secret in (old, new):
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(globex_hook.body, globex_hook.headers)

    def test_the_admin_token_has_no_signing_secret(self, shared: Relay) -> None:
        assert_json_error(shared.client.get("/v1/signing-secret", key="admin-token"), (401, 403))

    def test_health_and_ready_answer_200_without_auth(self, shared: Relay) -> None:
        health = shared.client.get("/health", key=None)
        ready = shared.client.get("/ready", key=None)
        assert health.status_code == 200
        assert ready.status_code == 200, ready.text

    def test_metrics_count_tasks_and_delivered_webhooks(self, shared: Relay, receiver: Receiver) -> None:
        api = shared.client
        before = metrics(api)
        task = api.submit("echo", "counted", webhook=receiver.url("/metrics"))
        api.wait_task(task["id"])
        receiver.wait_for("/metrics")
        delivered = ("relay_deliveries_total", (("channel", "webhook"), ("outcome", "delivered")))

        after = wait_until(
            lambda: (m := metrics(api)).get(delivered, 0) >= before.get(delivered, 0) + 1 and m,
            message="the delivered webhook to be counted",
        )

        assert after[delivered] == before.get(delivered, 0) + 1
        succeeded = ("relay_tasks_total", (("status", "succeeded"),))
        assert after[succeeded] >= before.get(succeeded, 0) + 1
        assert ("relay_dead_letters", ()) in after
        assert any(name == "relay_queue_depth" for name, _ in after)
        inf_bucket = ("relay_delivery_latency_seconds_bucket", (("le", "+Inf"),))
        assert after[inf_bucket] >= before.get(inf_bucket, 0) + 1

    def test_the_openapi_schema_lists_the_task_endpoints(self, shared: Relay) -> None:
        response = shared.client.get("/schema/openapi.json", key=None)
        assert response.status_code == 200
        paths = response.json()["paths"]
        assert "/v1/tasks" in paths
        assert "post" in paths["/v1/tasks"]
        assert any(p.startswith("/v1/tasks/{") for p in paths)


def metrics(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics`` parsed as Prometheus text: (sample name, sorted labels) -> value."""
    response = api.get("/metrics", key=None)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_body_over_the_limit_gets_413_with_a_detail(start_relay: StartRelay) -> None:
    api = Api(start_relay("api", RELAY_MAX_BODY_BYTES="1024").url)
    try:
        small = post_task(api, {"kind": "echo", "input": "x" * 500})
        large = post_task(api, {"kind": "echo", "input": "x" * 2000})
    finally:
        api.close()
    assert small.status_code == 202, small.text
    assert_json_error(large, 413)


LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://127.1:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://0.0.0.0:{port}/",
]


def test_every_loopback_spelling_is_refused_when_private_callbacks_are_not_allowed(
    start_relay: StartRelay, receiver: Receiver
) -> None:
    api = Api(start_relay("api", RELAY_ALLOW_PRIVATE_CALLBACKS="false").url)
    try:
        answers = {
            spelling: post_task(
                api, {"kind": "echo", "input": 1, "webhook": {"url": spelling.format(port=receiver.port)}}
            )
            for spelling in LOOPBACK_SPELLINGS
        }
    finally:
        api.close()
    for spelling, response in answers.items():
        detail = assert_json_error(response, 422)
        assert "webhook" in detail, spelling
    assert receiver.received == []


def test_submissions_over_the_rate_get_429_with_retry_after(start_relay: StartRelay) -> None:
    api = Api(start_relay("api", RELAY_SUBMIT_RATE="2").url)
    try:
        answers = [post_task(api, {"kind": "echo", "input": n}) for n in range(10)]
        globex = post_task(api, {"kind": "echo", "input": "other tenant"}, key="key-globex")
    finally:
        api.close()
    accepted = [r for r in answers if r.status_code == 202]
    limited = [r for r in answers if r.status_code == 429]
    assert len(accepted) + len(limited) == 10
    assert 2 <= len(accepted) <= 4  # the burst of 2, and perhaps a token that refilled meanwhile
    assert limited
    for response in limited:
        assert_json_error(response, 429)
        assert int(response.headers["Retry-After"]) >= 1
    assert globex.status_code == 202  # a tenant's limit is its own


def test_ready_answers_503_while_redis_is_down_and_200_again_after(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    api = Api(start_relay("api").url)
    try:
        assert api.get("/ready", key=None).status_code == 200
        redis_server.stop()
        try:
            down = wait_until(lambda: (r := api.get("/ready", key=None)).status_code == 503 and r, timeout_s=15)
            assert down.headers["content-type"].startswith("application/json")
            assert api.get("/health", key=None).status_code == 200  # the process itself still runs
        finally:
            redis_server.start()
        wait_until(lambda: api.get("/ready", key=None).status_code == 200, timeout_s=15, message="ready again")
    finally:
        api.close()


@pytest.mark.slow  # six seconds of a Redis that stays away
def test_an_api_whose_redis_cannot_be_reached_says_nothing_was_stored_and_does_not_flood_its_log(
    start_relay: StartRelay,
) -> None:
    process = start_relay("api", RELAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    api = Api(process.url)
    try:
        answer = api.post("/v1/tasks", json={"kind": "echo", "input": 1})
        detail = assert_json_error(answer, 503)
        # No connection was ever made: the task cannot have been accepted (a stall's 503 says it may have been).
        assert "nothing was stored" in detail, detail
        assert "may have been accepted" not in detail
        assert int(answer.headers["retry-after"]) > 0
        # Six seconds of a Redis that stays away: the live subscription backs off (0.5 s doubling to 4 s) and says
        # so once, where it said so twice a second. The window is the measure: the count over it is the point.
        time.sleep(6)
        warnings = [line for line in process.output().splitlines() if "live event subscription lost" in line]
        assert 1 <= len(warnings) <= 2, warnings
    finally:
        api.close()


@pytest.mark.slow  # four API processes and 360 racing requests
def test_concurrent_requests_with_one_idempotency_key_make_one_task(start_relay: StartRelay) -> None:
    # Several API processes, as in production: a client retrying on a timeout races its own first request.
    url = start_relay("api", "--workers", "4").url
    rounds, clients = 30, 12
    sessions = [httpx.Client(base_url=url, timeout=10) for _ in range(clients)]
    duplicated: list[set[str]] = []
    try:
        with ThreadPoolExecutor(clients) as pool:
            for round_ in range(rounds):
                barrier = threading.Barrier(clients)

                def submit(
                    http: httpx.Client, key: str = f"race-{round_}", barrier: threading.Barrier = barrier
                ) -> str:
                    barrier.wait()
                    response = http.post(
                        "/v1/tasks",
                        json={"kind": "echo", "input": key},
                        headers={"Authorization": "Bearer key-acme", "Idempotency-Key": key},
                    )
                    assert response.status_code == 202, response.text
                    return str(response.json()["id"])

                ids = set(pool.map(submit, sessions))
                if len(ids) > 1:
                    duplicated.append(ids)
    finally:
        for http in sessions:
            http.close()

    assert duplicated == []
