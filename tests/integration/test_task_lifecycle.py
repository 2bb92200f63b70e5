"""The task lifecycle end to end with kinds that fail on purpose: retries of the work, webhook event filters and the
task line, a socket's acks of every event, and the stats that count it all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.integration.test_api import metrics
from tests.integration.test_kinds import TEST_KINDS, events
from tests.kinds_for_tests import FLAKY_RETRIES
from tests.support import Receiver, WsClient, wait_until, webhook_attempts


@pytest.fixture(scope="class")
def kinds_relay(redis_server: RedisServer) -> Iterator[Relay]:
    """One API and one worker that also load tests/kinds_for_tests.py, shared by a class of tests."""
    with relay_for_many_tests(redis_server, RELAY_TASK_MODULES=TEST_KINDS) as relay:
        yield relay


class TestTheLifecycleWithTheTestKinds:
    """One API and one worker, loading tests/kinds_for_tests.py, shared by these tests."""

    def test_a_kind_that_fails_twice_then_succeeds_is_retried_and_its_webhook_gets_the_end_only(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        before = metrics(kinds_relay.client)
        task = kinds_relay.client.submit("flaky", {"failures": 2}, webhook=receiver.url("/flaky"))

        done = kinds_relay.client.wait_task(task["id"], timeout_s=20)
        log = events(kinds_relay.client, task["id"])

        assert done["status"] == "succeeded"
        assert done["result"] == {"attempts": 3}
        assert done["attempt"] == 3
        assert done["error"] is None
        assert [e["type"] for e in log] == [
            "task.progress",
            "task.retrying",
            "task.progress",
            "task.retrying",
            "task.progress",
            "task.completed",
        ]
        assert [e["seq"] for e in log] == list(range(1, 7))
        retries = [e for e in log if e["type"] == "task.retrying"]
        assert [r["data"]["attempt"] for r in retries] == [2, 3]
        assert retries[0]["data"]["error"] == {"type": "Retry", "message": "attempt 1 failed on purpose"}
        for retry, next_run in ((log[1], log[2]), (log[3], log[4])):
            assert next_run["data"]["message"] == f"attempt {retry['data']['attempt']}"
            # Never early: the next attempt starts at its run_at or later.
            assert datetime.fromisoformat(next_run["created_at"]) >= datetime.fromisoformat(retry["data"]["run_at"])
        # The webhook wants the final types only (the default): one POST, the completion.
        (hook,) = receiver.wait_for("/flaky")
        assert hook.json()["id"] == log[-1]["id"]
        after = metrics(kinds_relay.client)
        retried = ("relay_tasks_total", (("status", "retried"),))
        assert after[retried] - before.get(retried, 0) >= 2

    def test_a_kind_out_of_retries_ends_failed_after_its_last_attempt(self, kinds_relay: Relay) -> None:
        task = kinds_relay.client.submit("flaky", {"failures": 9, "delay_s": 0})

        done = kinds_relay.client.wait_task(task["id"], timeout_s=30)
        log = events(kinds_relay.client, task["id"])

        assert done["status"] == "failed"
        assert done["attempt"] == FLAKY_RETRIES + 1
        assert done["error"] == {"type": "Retry", "message": f"attempt {FLAKY_RETRIES + 1} failed on purpose"}
        assert [e["type"] for e in log].count("task.retrying") == FLAKY_RETRIES
        assert log[-1]["type"] == "task.failed"

    def test_a_kind_retries_the_errors_it_declares_and_no_others(self, kinds_relay: Relay) -> None:
        retried = kinds_relay.client.submit("flaky_error", {"failures": 1})
        not_retried = kinds_relay.client.submit("flaky_error", {"failures": 10})

        assert kinds_relay.client.wait_task(retried["id"], timeout_s=20)["result"] == {"attempts": 2}
        failed = kinds_relay.client.wait_task(not_retried["id"], timeout_s=20)
        assert (failed["status"], failed["attempt"]) == ("failed", 1)
        assert failed["error"]["type"] == "ValueError"
        assert [e["type"] for e in events(kinds_relay.client, retried["id"])] == ["task.retrying", "task.completed"]

    def test_a_task_waiting_for_its_retry_can_be_cancelled_and_never_runs_again(self, kinds_relay: Relay) -> None:
        task = kinds_relay.client.submit("flaky", {"failures": 1, "delay_s": 2})
        waiting = wait_until(
            lambda: (t := kinds_relay.client.task(task["id"]))["status"] == "scheduled" and t["attempt"] == 2 and t,
            timeout_s=10,
            message="the task to wait for its second attempt",
        )
        assert waiting["run_at"] is not None

        response = kinds_relay.client.post(f"/v1/tasks/{task['id']}/cancel")
        assert response.status_code == 202, response.text
        # A witness scheduled just after it: once the witness has run, the cancelled task's run_at has passed and
        # the promotion that would have run it has been.
        run_at = datetime.fromisoformat(waiting["run_at"]) + timedelta(seconds=0.2)
        witness = kinds_relay.client.submit("echo", "witness", body={"run_at": run_at.isoformat()})
        witness_done = kinds_relay.client.wait_task(witness["id"], timeout_s=20)
        assert datetime.fromisoformat(witness_done["started_at"]) >= run_at

        done = kinds_relay.client.task(task["id"])
        assert done["status"] == "cancelled"
        log = events(kinds_relay.client, task["id"])
        assert [e["type"] for e in log] == ["task.progress", "task.retrying", "task.cancelled"]

    def test_a_webhook_that_lists_progress_gets_every_event_in_seq_order(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        events_wanted = ["task.progress", "task.completed"]
        task = kinds_relay.client.submit(
            "count_sync", {"steps": 4}, body={"webhook": {"url": receiver.url("/steps"), "events": events_wanted}}
        )
        assert task["webhook"] == {"url": receiver.url("/steps"), "events": events_wanted}

        kinds_relay.client.wait_task(task["id"])
        log = events(kinds_relay.client, task["id"])
        hooks = wait_until(
            lambda: (h := receiver.on("/steps")) and h[-1].json()["type"] == "task.completed" and h,
            timeout_s=20,
            message="the final webhook",
        )
        posted = [h.json()["seq"] for h in hooks]
        assert posted == sorted(set(posted))  # in seq order, none twice
        outcomes = wait_until(
            lambda: (
                (o := {(a["event_id"], a["outcome"]) for a in webhook_attempts(kinds_relay.client, task["id"])})
                and (log[-1]["id"], "delivered") in o
                and o
            ),
            message="the final webhook's attempt to be recorded",
        )
        # Each event was posted, or skipped because a newer one was owed before it was sent: none is lost.
        for event in log:
            sent = (event["id"], "delivered") in outcomes
            skipped = (event["id"], "skipped") in outcomes
            assert sent != skipped, event
            assert sent == (event["seq"] in posted)
        assert (log[-1]["id"], "delivered") in outcomes

    def test_a_slow_receiver_gets_the_newest_progress_and_every_final_event_in_order(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        url = receiver.delay("/slow", 0.3)
        hook = {"url": url, "events": ["task.progress", "task.completed"]}
        task = kinds_relay.client.submit("burst", {"events": 40}, body={"webhook": hook})

        kinds_relay.client.wait_task(task["id"])
        hooks = wait_until(
            lambda: (h := receiver.on("/slow")) and h[-1].json()["type"] == "task.completed" and h,
            timeout_s=20,
            message="the final webhook",
        )
        posted = [h.json()["seq"] for h in hooks]
        assert posted == sorted(set(posted))
        assert posted[-1] == 41  # the completion, after 40 progress events
        assert len(posted) < 20  # the superseded progress was skipped, not queued up behind the slow receiver
        attempts = webhook_attempts(kinds_relay.client, task["id"])
        skipped = [a for a in attempts if a["outcome"] == "skipped"]
        assert len(skipped) + len(posted) == 41
        assert all(a["error"] == "superseded by a newer event of its task" for a in skipped)

    def test_a_webhook_that_lists_retrying_gets_each_retry_before_the_end(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        hook = {"url": receiver.url("/retries"), "events": ["task.retrying", "task.completed", "task.failed"]}
        task = kinds_relay.client.submit("flaky_error", {"failures": 2}, body={"webhook": hook})

        assert kinds_relay.client.wait_task(task["id"], timeout_s=20)["status"] == "succeeded"
        hooks = receiver.wait_for("/retries", 3)
        assert [(h.json()["type"], h.json()["seq"]) for h in hooks] == [
            ("task.retrying", 1),
            ("task.retrying", 2),
            ("task.completed", 3),
        ]
        assert [h.json()["data"]["attempt"] for h in hooks[:2]] == [2, 3]

    def test_a_socket_that_acks_every_event_settles_them_all_and_no_webhook_is_sent(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        hook = {"url": receiver.url("/acked"), "events": ["task.retrying", "task.completed"]}
        body = {"webhook": hook, "websocket": True, "delay_s": 1}  # time to subscribe before its first event
        task = kinds_relay.client.submit("flaky", {"failures": 2, "delay_s": 0.2}, body=body)
        ws = WsClient(kinds_relay.api.url)
        try:
            ws.subscribe(task)
            log = ws.events_until_final(task["id"], ack=True)
        finally:
            ws.close()

        wanted = [e for e in log if e["type"] in hook["events"]]
        assert [e["type"] for e in wanted] == ["task.retrying", "task.retrying", "task.completed"]
        expected = {(e["id"], "websocket", "acked") for e in wanted} | {(e["id"], "webhook", "skipped") for e in wanted}
        wait_until(
            lambda: (
                expected
                <= {
                    (a["event_id"], a["channel"], a["outcome"])
                    for a in kinds_relay.client.get(f"/v1/tasks/{task['id']}/deliveries").json()["attempts"]
                }
            ),
            timeout_s=10,
            message="every wanted event acked, its webhook skipped",
        )
        # The ack settles the webhook in the same step that records "skipped": once logged, none can go out.
        assert receiver.on("/acked") == []

    @pytest.mark.parametrize(
        ("events_given", "named"),
        [(["task.finished"], "task.finished"), ([], "events"), ("task.completed", "events")],
    )
    def test_a_webhook_with_bad_event_types_is_a_422_naming_the_field(
        self, kinds_relay: Relay, events_given: object, named: str
    ) -> None:
        response = kinds_relay.client.post(
            "/v1/tasks", json={"kind": "echo", "webhook": {"url": "http://127.0.0.1:9/x", "events": events_given}}
        )
        assert response.status_code == 422, response.text
        assert "webhook.events" in response.json()["detail"]
        assert named in response.json()["detail"]

    @pytest.mark.slow  # waits out the API's 1 s figures five times
    def test_stats_count_the_scheduled_tasks_waiting_now_per_tenant(self, kinds_relay: Relay) -> None:
        api = kinds_relay.client

        def scheduled() -> dict[str, int]:
            figures = {}
            for name, key, params in (
                ("acme", "key-acme", {}),
                ("globex", "key-globex", {}),
                ("everyone", "admin-token", {}),
                ("acme as seen by the operator", "admin-token", {"tenant": "acme"}),
            ):
                response = api.get("/v1/stats", key=key, params=params)
                assert response.status_code == 200, response.text
                figures[name] = response.json()["tasks"]["scheduled"]
            return figures

        def waiting(**expected: int) -> None:
            """Each figure has grown by this much since the test began (an API answers from figures up to 1 s old)."""
            wanted = {
                "acme": expected["acme"],
                "globex": expected["globex"],
                "everyone": expected["acme"] + expected["globex"],
                "acme as seen by the operator": expected["acme"],
            }
            wait_until(
                lambda: {k: v - before[k] for k, v in scheduled().items()} == wanted,
                timeout_s=10,
                message=f"scheduled figures to grow by {wanted}",
            )

        before = scheduled()
        later = [api.submit("echo", n, body={"delay_s": 600}) for n in range(3)]
        in_a_week = (datetime.now(UTC) + timedelta(days=7)).isoformat().replace("+00:00", "Z")
        api.submit("echo", 9, key="key-globex", body={"run_at": in_a_week})
        waiting(acme=3, globex=1)
        soon = api.submit("echo", 10, body={"delay_s": 0.3})
        assert api.wait_task(soon["id"])["status"] == "succeeded"
        waiting(acme=3, globex=1)  # it ran: it waits no more
        assert api.post(f"/v1/tasks/{later[0]['id']}/cancel").status_code == 202
        waiting(acme=2, globex=1)
        # A failed attempt whose work is tried again in 10 minutes waits too, until it is cancelled.
        retried = api.submit("flaky", {"failures": 1, "delay_s": 600})
        wait_until(lambda: api.task(retried["id"])["status"] == "scheduled", message="the retry to be scheduled")
        waiting(acme=3, globex=1)
        for task in (*later[1:], retried):
            assert api.post(f"/v1/tasks/{task['id']}/cancel").status_code == 202
        waiting(acme=0, globex=1)

    def test_stats_count_a_tenants_tasks_deliveries_and_dead_letters_and_no_one_elses(
        self, kinds_relay: Relay, receiver: Receiver
    ) -> None:
        api = kinds_relay.client

        def stats(key: str, **params: str) -> dict[str, Any]:
            response = api.get("/v1/stats", key=key, params=params)
            assert response.status_code == 200, response.text
            return dict(response.json())

        acme, globex, everyone = stats("key-acme"), stats("key-globex"), stats("admin-token")
        first_call = time.monotonic()
        assert acme["tenant"] == "acme"
        assert everyone["tenant"] is None
        done = [
            api.submit("echo", 1, webhook=receiver.url("/stats-ok")),
            api.submit("flaky", {"failures": 1}),
            api.submit("fail", {"message": "x"}, webhook=receiver.script("/stats-gone", 410)),
        ]
        later = api.submit("echo", 2, body={"delay_s": 600})
        assert api.post(f"/v1/tasks/{later['id']}/cancel").status_code == 202
        for task in done:
            api.wait_task(task["id"])
        receiver.wait_for("/stats-ok")
        wait_until(
            lambda: stats("key-acme")["dead_letters"]["stored"] > acme["dead_letters"]["stored"],
            message="the 410 to be a dead letter",
        )
        time.sleep(max(0.0, first_call + 4.5 - time.monotonic()))  # rates need a snapshot a few seconds old

        def grew(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
            return {k: after["tasks"][k] - before["tasks"][k] for k in after["tasks"]}

        expected = {
            "submitted": 4,
            "scheduled": 0,  # waiting now: the scheduled one was cancelled
            "retried": 1,
            "succeeded": 2,
            "failed": 1,
            "cancelled": 1,
            "open": 0,
        }
        now = stats("key-acme")
        assert grew(acme, now) == expected
        webhook = {
            o: now["deliveries"]["webhook"][o] - acme["deliveries"]["webhook"][o] for o in ("delivered", "failed")
        }
        assert webhook == {"delivered": 1, "failed": 1}
        assert now["dead_letters"]["stored"] - acme["dead_letters"]["stored"] == 1
        assert (
            now["dead_letters"]["by_reason"]["endpoint_gone"] - acme["dead_letters"]["by_reason"]["endpoint_gone"] == 1
        )
        assert now["latency"]["delivered"] - acme["latency"]["delivered"] == 1
        assert sum(now["destinations"].values()) >= 1
        assert now["queue_depth"] is None  # the broker's queue is everyone's: the operator's figure
        assert now["rates"] is not None
        assert now["rates"]["tasks_submitted"] > 0
        assert now["rates"]["window_s"] >= 4
        assert stats("key-globex")["deliveries"] == globex["deliveries"]
        assert isinstance(stats("admin-token")["queue_depth"], int)
        assert grew(globex, stats("key-globex")) == dict.fromkeys(expected, 0)
        assert grew(acme, stats("admin-token", tenant="acme")) == expected
        for name, count in grew(everyone, stats("admin-token")).items():
            assert count >= expected[name]
        # A tenant's filter never widens its view; a tenant that does not exist is not an idle one.
        for key, tenant in (("key-globex", "acme"), ("admin-token", "nobody"), ("admin-token", "ACME")):
            response = api.get("/v1/stats", key=key, params={"tenant": tenant})
            assert response.status_code == 404, response.text
            assert tenant in response.json()["detail"]
        assert stats("admin-token", tenant="")["tenant"] is None
