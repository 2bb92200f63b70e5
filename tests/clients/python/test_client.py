"""relay_client against a real Relay (one API and one worker for the module): submit, wait and read back, lists that
follow cursors while tasks arrive, cancel, a stream across an API restart, dead letters, destinations, and the
webhooks it verifies."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import msgspec
import pytest
import relay_client
import relay_client.webhooks
from relay_client import (
    AsyncRelay,
    Conflict,
    DeadLetterReason,
    DestinationState,
    EventType,
    Invalid,
    NotFound,
    Relay,
    TaskStatus,
    WaitTimeout,
    WebhookVerificationError,
    verify_webhook,
)
from relay_client import types as wire

from tests.clients.python.conftest import TENANT_KEY
from tests.integration.conftest import Relay as RelayProcesses
from tests.support import Receiver, task_events, wait_until

pytestmark = pytest.mark.integration


def test_a_task_is_submitted_waited_for_and_read_back(relay: Relay) -> None:
    task = relay.tasks.submit("echo", {"hello": "world"})

    assert task.status is TaskStatus.QUEUED
    done = task.wait(timeout=20)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result == {"hello": "world"}
    assert relay.tasks.get(task.id) == done
    assert relay.tasks.wait(task.id, timeout=5) == done  # by id, on a task that has ended: at once


async def test_the_async_client_submits_waits_and_reads_back(async_relay: AsyncRelay) -> None:
    task = await async_relay.tasks.submit("echo", [1, 2, 3])

    done = await task.wait(timeout=20)
    assert done.status is TaskStatus.SUCCEEDED
    assert done.result == [1, 2, 3]
    assert await async_relay.tasks.get(task.id) == done
    seen = [t.id async for t in async_relay.tasks.list(since=done.created_at - timedelta(seconds=1), page_size=2)]
    assert task.id in seen
    events = [e async for e in async_relay.tasks.events(task.id)]
    assert events[-1].type is EventType.COMPLETED


def test_a_failing_task_ends_failed_and_a_bad_one_is_refused_with_the_reason(relay: Relay) -> None:
    failed = relay.tasks.submit("fail", {"message": "on purpose"}).wait(timeout=20)
    assert failed.status is TaskStatus.FAILED
    assert failed.error is not None
    assert "on purpose" in failed.error.message

    with pytest.raises(Invalid) as refused:
        relay.tasks.submit("no-such-kind", {})
    assert refused.value.status == 422
    assert "unknown task kind" in refused.value.detail
    with pytest.raises(NotFound):
        relay.tasks.get("task_nosuchtask")


def test_wait_gives_up_at_its_timeout_and_the_task_goes_on(relay: Relay) -> None:
    task = relay.tasks.submit("sleep", {"seconds": 3})
    started = time.monotonic()

    with pytest.raises(WaitTimeout):
        task.wait(timeout=0.5)

    assert 0.5 <= time.monotonic() - started < 1.0  # at its timeout, not a poll or a read later
    assert task.wait(timeout=20).status is TaskStatus.SUCCEEDED


def test_the_same_idempotency_key_returns_the_first_task(relay: Relay) -> None:
    first = relay.tasks.submit("echo", 1, idempotency_key="client-test-same-key")
    again = relay.tasks.submit("echo", 1, idempotency_key="client-test-same-key")
    assert again.id == first.id


def test_a_list_of_120_tasks_gives_each_once_while_others_arrive(relay: Relay, shared: RelayProcesses) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    submitted = {relay.tasks.submit("echo", i).id for i in range(120)}
    arriving: list[str] = []
    stop = threading.Event()

    def submit_more() -> None:
        with Relay(shared.api.url, TENANT_KEY) as other:
            while not stop.is_set():
                arriving.append(other.tasks.submit("echo", "late").id)

    submitter = threading.Thread(target=submit_more, daemon=True)
    submitter.start()
    try:
        wait_until(lambda: len(arriving) >= 3, message="tasks arriving while the list is read")
        listed: list[str] = []
        for task in relay.tasks.list(since=since, page_size=7):
            listed.append(task.id)
            if len(listed) % 20 == 0:
                time.sleep(0.02)  # let more arrive between pages
    finally:
        stop.set()
        submitter.join(10)

    assert len(listed) == len(set(listed)), "a task was listed twice"
    assert submitted <= set(listed), f"{len(submitted - set(listed))} tasks skipped"
    assert len(arriving) > 3


def test_cancel_ends_a_scheduled_task_and_refuses_an_ended_one(relay: Relay) -> None:
    task = relay.tasks.submit("echo", "later", delay_s=60)
    assert task.status is TaskStatus.SCHEDULED

    cancelled = relay.tasks.cancel(task.id)

    assert cancelled.status is TaskStatus.CANCELLED
    assert task.wait(timeout=5).status is TaskStatus.CANCELLED
    with pytest.raises(Conflict) as ended:
        relay.tasks.cancel(task.id)
    assert ended.value.status == 409
    assert [e.type for e in relay.tasks.stream(task.id)] == [EventType.CANCELLED]


async def test_the_async_client_cancels_a_running_task(async_relay: AsyncRelay) -> None:
    task = await async_relay.tasks.submit("sleep", {"seconds": 30})
    async for event in async_relay.tasks.stream(task.id):
        assert event.type is EventType.PROGRESS  # it runs
        break
    await async_relay.tasks.cancel(task.id)
    assert (await task.wait(timeout=15)).status is TaskStatus.CANCELLED


@pytest.mark.slow
def test_a_stream_resumes_across_an_api_restart_with_no_event_lost_or_repeated(
    relay: Relay, shared: RelayProcesses
) -> None:
    task = relay.tasks.submit("sleep", {"seconds": 6})
    stream = relay.tasks.stream(task.id)
    before = [next(stream), next(stream)]

    shared.api.restart()  # the open stream is dropped; the client reconnects with Last-Event-ID
    after = list(stream)

    seqs = [e.seq for e in before + after]
    logged = [e["seq"] for e in task_events(shared.client, task.id)]
    assert seqs == logged == list(range(1, len(logged) + 1))
    assert after[-1].type is EventType.COMPLETED
    assert relay.tasks.get(task.id).status is TaskStatus.SUCCEEDED


def test_dead_letters_are_counted_by_a_dry_run_then_replayed(
    relay: Relay, admin: Relay, receiver: Receiver, shared: RelayProcesses
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    gone = receiver.script("/gone", 410, 410, 200)  # gone twice (two dead letters), then back
    tasks = [relay.tasks.submit("echo", i, webhook=gone) for i in range(2)]
    for task in tasks:
        wait_until(lambda t=task: list(relay.dead_letters.list(task_id=t.id)), message="the dead letter")
    letters = list(relay.dead_letters.list(since=since, reason=DeadLetterReason.ENDPOINT_GONE))
    assert {d.task_id for d in letters} == {t.id for t in tasks}
    assert relay.dead_letters.get(letters[0].id) == letters[0]

    dry = relay.dead_letters.replay_bulk(dry_run=True, since=since)
    assert (dry.matched, dry.replayed) == (2, 0)
    assert len(receiver.on("/gone")) == 2  # nothing sent

    done = relay.dead_letters.replay_bulk(dry_run=False, since=since, reason="endpoint_gone")
    assert (done.matched, done.replayed) == (2, 2)
    receiver.wait_for("/gone", count=4)
    wait_until(lambda: not list(relay.dead_letters.list(since=since)), message="replayed letters to leave the store")
    with pytest.raises(NotFound):
        admin.dead_letters.delete(letters[0].id)


def test_a_paused_destination_holds_its_webhooks_until_resumed(relay: Relay, receiver: Receiver) -> None:
    hook = receiver.url("/paused")
    relay.tasks.submit("echo", "first", webhook=hook)
    receiver.wait_for("/paused")
    (destination,) = [d for d in relay.destinations.list() if d.origin == f"http://127.0.0.1:{receiver.port}"]

    paused = relay.destinations.pause(destination.id)
    assert paused.state is DestinationState.PAUSED
    held = relay.tasks.submit("echo", "held", webhook=hook)
    held.wait(timeout=20)
    wait_until(lambda: relay.destinations.get(destination.id).owed == 1, message="the webhook held")
    time.sleep(0.5)
    assert len(receiver.on("/paused")) == 1
    assert [d.id for d in relay.destinations.list(state="paused")] == [destination.id]

    capped = relay.destinations.update(destination.id, max_in_flight=3, rate_per_s=50.0)
    assert (capped.max_in_flight, capped.rate_per_s) == (3, 50.0)
    assert relay.destinations.update(destination.id, rate_per_s=None).rate_per_s is None
    resumed = relay.destinations.resume(destination.id)
    assert resumed.state is not DestinationState.PAUSED
    (late,) = [r for r in receiver.wait_for("/paused", count=2) if r.json()["task_id"] == held.id]
    assert late.json()["data"]["result"] == "held"


def test_webhooks_verify_with_the_tenants_secret_and_nothing_else(
    relay: Relay, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = relay.signing_secret.get()
    task = relay.tasks.submit("echo", {"n": 1}, webhook=receiver.url("/verify"))
    (webhook,) = receiver.wait_for("/verify")

    event = verify_webhook(webhook.body, webhook.headers, secret)
    assert (event.task_id, event.type, event.data["result"]) == (task.id, EventType.COMPLETED, {"n": 1})
    assert event.id == {k.lower(): v for k, v in webhook.headers.items()}["webhook-id"]

    changed = webhook.body.replace(b'"n":1', b'"n":2')
    assert changed != webhook.body
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(changed, webhook.headers, secret)
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkwMTI="
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(webhook.body, webhook.headers, other)
    # The same webhook read ten minutes later: a replay.
    later = time.time() + 600
    monkeypatch.setattr(relay_client.webhooks, "time", SimpleNamespace(time=lambda: later))
    with pytest.raises(WebhookVerificationError, match="old"):
        verify_webhook(webhook.body, webhook.headers, secret)
    assert verify_webhook(webhook.body, webhook.headers, secret, tolerance_s=900).id == event.id


def test_during_a_rotation_webhooks_verify_with_the_old_or_the_new_secret(relay: Relay, receiver: Receiver) -> None:
    old = relay.signing_secret.get()
    new = relay.signing_secret.rotate()
    assert new != old
    assert relay.signing_secret.get() == new

    relay.tasks.submit("echo", "rotating", webhook=receiver.url("/rotating"))
    (webhook,) = receiver.wait_for("/rotating")

    assert len({k.lower(): v for k, v in webhook.headers.items()}["webhook-signature"].split()) == 2
    for secrets in (old, new, [old, new], [new, old]):
        assert verify_webhook(webhook.body, webhook.headers, secrets).data["result"] == "rotating"


def test_answers_of_a_real_relay_decode_into_the_client_types(
    relay: Relay, admin: Relay, receiver: Receiver, shared: RelayProcesses
) -> None:
    task = relay.tasks.submit("sleep", {"seconds": 1}, webhook=receiver.url("/types"), events=["task.progress"])
    task.wait(timeout=20)
    deliveries = wait_until(lambda: (d := relay.tasks.deliveries(task.id)).attempts and d, message="an attempt")
    assert isinstance(deliveries, wire.AttemptList)

    stats = admin.stats()
    assert isinstance(stats, wire.Stats)
    assert stats.tasks.submitted >= 1
    assert isinstance(relay.stats(), wire.Stats)
    cluster = admin.ops.cluster()
    assert cluster.mode == "standalone"
    assert cluster.nodes
    assert admin.ops.signing_secret().startswith("whsec_")
    # Each answer read into the client's types and written out again holds the whole answer: no field of Relay's is
    # missing from the types, none is read as something else.
    answers = {
        f"/v1/tasks/{task.id}": wire.Task,
        "/v1/tasks?limit=5": wire.TaskPage,
        f"/v1/tasks/{task.id}/events": wire.EventList,
        f"/v1/tasks/{task.id}/deliveries": wire.AttemptList,
        "/v1/destinations": wire.DestinationPage,
        "/v1/signing-secret": wire.SigningSecret,
        "/v1/tasks/task_nosuchtask": wire.ErrorBody,
    }
    for path, struct in answers.items():
        answer = shared.client.get(path, key=TENANT_KEY)
        read = msgspec.json.decode(answer.content, type=struct)
        assert _holds(msgspec.json.decode(msgspec.json.encode(read)), answer.json()), path
    for path, struct in {"/v1/stats": wire.Stats, "/v1/ops/cluster": wire.ClusterView}.items():
        answer = shared.client.get(path, key="admin-token")
        read = msgspec.json.decode(answer.content, type=struct)
        assert _holds(msgspec.json.decode(msgspec.json.encode(read)), answer.json()), path


def _holds(read: object, raw: object) -> bool:
    """Whether ``read`` holds every field of ``raw``, with the same values (it may hold more: defaults)."""
    if isinstance(raw, dict):
        return isinstance(read, dict) and all(k in read and _holds(read[k], v) for k, v in raw.items())
    if isinstance(raw, list):
        return isinstance(read, list) and len(read) == len(raw) and all(map(_holds, read, raw))
    return read == raw


def test_a_client_of_ones_own_is_used_as_it_is_and_left_open(shared: RelayProcesses) -> None:
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(r.url.path)]}) as own:
        with Relay(shared.api.url, TENANT_KEY, http_client=own) as relay:
            relay.tasks.submit("echo", 1).wait(timeout=20)
        assert not own.is_closed
        assert "/v1/tasks" in seen


def test_an_unknown_key_is_unauthorized_and_a_tenants_key_is_forbidden_the_ops_paths(shared: RelayProcesses) -> None:
    with Relay(shared.api.url, "not-a-key") as stranger, pytest.raises(relay_client.Unauthorized):
        stranger.tasks.submit("echo", 1)
    with Relay(shared.api.url, TENANT_KEY) as tenant, pytest.raises(relay_client.Forbidden):
        tenant.ops.cluster()


class _ForwardingProxy(BaseHTTPRequestHandler):
    """A plain HTTP proxy: takes ``METHOD http://host/path``, notes it, and forwards it (answers buffered)."""

    seen: list[str]

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(f"{self.command} {self.path}")
        hop_by_hop = {"host", "proxy-connection", "connection", "content-length", "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
        answer = httpx.request(self.command, self.path, headers=headers, content=body, timeout=30, trust_env=False)
        self.send_response(answer.status_code)
        for name in ("content-type", "retry-after"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_proxy_given_in_code_carries_every_request(shared: RelayProcesses) -> None:
    seen: list[str] = []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), type("Proxy", (_ForwardingProxy,), {"seen": seen}))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with Relay(shared.api.url, TENANT_KEY, proxy=f"http://127.0.0.1:{proxy.server_address[1]}") as relay:
            done = relay.tasks.submit("echo", "proxied").wait(timeout=20)
    finally:
        proxy.shutdown()
        proxy.server_close()

    assert done.result == "proxied"
    assert seen[0] == f"POST {shared.api.url}/v1/tasks"
    assert f"GET {shared.api.url}/v1/tasks/{done.id}/stream" in seen
