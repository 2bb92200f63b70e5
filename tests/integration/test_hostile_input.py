"""What a hostile or careless client sends: every answer is a 4xx with a detail, and nothing it stores can break
the tools operators and other tenants read with."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServer
from tests.integration.conftest import OpenWs, Relay, StartRelay, relay_for_many_tests
from tests.integration.test_api import assert_json_error, post_task
from tests.support import Api, Receiver, WsClient, store_layout, wait_until


def unreadable_count_of(client: Api) -> float:
    text = client.get("/metrics", key=None).text
    for family in text_string_to_metric_families(text):
        if family.name == "relay_unreadable_records":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no relay_unreadable_records in /metrics")


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server) as relay:
        yield relay


JSON = {"content-type": "application/json"}


def nested(depth: int) -> str:
    """A JSON array nested ``depth`` levels deep."""
    return "[" * depth + "]" * depth


def submit_raw(relay: Relay, body: str, key: str | None = "key-acme") -> tuple[int, dict[str, object]]:
    headers = {"content-type": "application/json"}
    response = relay.client.post("/v1/tasks", content=body, key=key, headers=headers)
    return response.status_code, response.json()


def test_input_as_deep_as_the_limit_is_accepted_and_one_level_deeper_is_a_422(shared: Relay) -> None:
    status, task = submit_raw(shared, f'{{"kind": "echo", "input": {nested(64)}}}')
    assert status == 202
    assert shared.client.wait_task(str(task["id"]))["status"] == "succeeded"

    response = shared.client.post("/v1/tasks", content=f'{{"kind": "echo", "input": {nested(65)}}}', headers=JSON)
    detail = assert_json_error(response, 422)
    assert "RELAY_MAX_INPUT_DEPTH" in detail


def test_a_body_nested_thousands_deep_is_a_422_even_without_a_key(shared: Relay) -> None:
    for key in ("key-acme", None):
        response = shared.client.post(
            "/v1/tasks", content=f'{{"kind": "echo", "input": {nested(20_000)}}}', key=key, headers=JSON
        )
        assert_json_error(response, (401, 422))
    deep_replay = shared.client.post("/v1/dead-letters/replay", content=nested(5_000), key="admin-token", headers=JSON)
    assert_json_error(deep_replay, 422)
    # Never closed, so not JSON at all: still a 4xx, not the decoder's RecursionError (a 500).
    for path, key in (("/v1/tasks", "key-acme"), ("/v1/dead-letters/replay", "admin-token")):
        assert_json_error(shared.client.post(path, content="[" * 5_000, key=key, headers=JSON), 422)
    # Brackets inside strings nest nothing.
    status, _ = submit_raw(shared, json.dumps({"kind": "echo", "input": {"text": "[" * 5_000}}))
    assert status == 202


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/tasks/task_x/events?after_seq=9223372036854775809", "key-acme"),
        ("/v1/tasks/task_x/events?after_seq=-1", "key-acme"),
        ("/v1/dead-letters?cursor=nan:dl_x", "admin-token"),
        ("/v1/dead-letters?cursor=inf:dl_x", "admin-token"),
        ("/v1/dead-letters?cursor=1e400:dl_x", "admin-token"),
        ("/v1/dead-letters?limit=100000", "admin-token"),
        ("/v1/dead-letters?since=yesterday", "admin-token"),
    ],
)
def test_out_of_range_queries_are_422s(shared: Relay, path: str, key: str) -> None:
    task = shared.client.submit("echo", 1)
    assert_json_error(shared.client.get(path.replace("task_x", task["id"]), key=key), 422)


@pytest.mark.parametrize(
    "url",
    [
        "http://" + "a" * 300 + ".example/hook",
        "http://" + "a." * 150 + "example/hook",
        "http://xn--a.example/hook",
        "http://[::1/hook",
        "http://exa mple.com/hook",
    ],
)
def test_webhook_urls_with_impossible_hosts_are_422s(shared: Relay, url: str) -> None:
    response = post_task(shared.client, {"kind": "echo", "input": 1, "webhook": {"url": url}})
    assert "webhook.url" in assert_json_error(response, 422)


def test_ids_of_any_length_are_404s(shared: Relay) -> None:
    for path in ("/v1/tasks/task_" + "x" * 5000, "/v1/dead-letters/dl_" + "x" * 5000):
        key = "admin-token" if "dead" in path else "key-acme"
        assert_json_error(shared.client.get(path, key=key), 404)


def test_the_signing_secret_is_never_cached(shared: Relay) -> None:
    response = shared.client.get("/v1/signing-secret")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


def test_a_failure_message_cannot_forge_a_log_line(shared: Relay) -> None:
    task = shared.client.submit("fail", {"message": "boom\n2026-01-01 00:00:00 INFO relay.worker: FORGED"})
    assert shared.client.wait_task(task["id"])["status"] == "failed"
    log = shared.worker.output()
    assert "FORGED" in log  # it is logged, escaped, on the line of the task that failed
    assert not any(line.startswith("2026-01-01 00:00:00 INFO relay.worker: FORGED") for line in log.splitlines())


def poisoned_dead_letter(redis_server: RedisServer, dl_id: str, task_id: str, tenant: str = "acme") -> None:
    """A dead letter as an older Relay could store it: its event holds a result nested 990 levels deep."""
    now = datetime.now(UTC).isoformat()
    body = (
        f'{{"id": "{dl_id}", "tenant": "{tenant}", "task_id": "{task_id}", "event": {{"id": "evt_{dl_id}", '
        f'"type": "task.completed", "task_id": "{task_id}", "seq": 1, "created_at": "{now}", '
        f'"data": {{"status": "succeeded", "result": {nested(990)}}}}}, "url": "http://127.0.0.1:9/hook", '
        f'"reason": "retries_exhausted", "attempts": 3, "last_status_code": 500, "last_error": null, '
        f'"first_attempt_at": "{now}", "dead_at": "{now}", "replays": 0}}'
    )
    client = redis_server.client()
    score = time.time() * 1000
    part = store_layout().for_id(dl_id)
    client.set(f"{part.prefix}dl:{dl_id}", body)
    client.zadd(part.dead_letters, {dl_id: score})
    client.zadd(part.dead_letters_of(tenant), {dl_id: score})
    client.close()


def test_a_record_that_cannot_be_read_is_skipped_counted_and_can_be_deleted(
    start_relay: StartRelay, redis_server: RedisServer
) -> None:
    client = Api(start_relay("api").url)
    try:
        poisoned_dead_letter(redis_server, "dl_poison", "task_poison")
        before = unreadable_count_of(client)

        for key in ("admin-token", "key-acme"):
            listed = client.get("/v1/dead-letters", key=key)
            assert listed.status_code == 200, listed.text
            assert listed.json()["items"] == []
        assert unreadable_count_of(client) >= before + 2
        replay = client.post("/v1/dead-letters/replay", json={"dry_run": False}, key="admin-token")
        assert replay.status_code == 202
        assert replay.json() == {"matched": 0, "replayed": 0}
        # Its owner and operators are told it cannot be read; another tenant is told it does not exist.
        assert "deleted" in assert_json_error(client.get("/v1/dead-letters/dl_poison", key="key-acme"), 409)
        assert_json_error(client.get("/v1/dead-letters/dl_poison", key="key-globex"), 404)
        assert_json_error(client.delete("/v1/dead-letters/dl_poison", key="key-globex"), 404)
        assert client.delete("/v1/dead-letters/dl_poison", key="admin-token").status_code == 204
        assert_json_error(client.get("/v1/dead-letters/dl_poison", key="admin-token"), 404)
    finally:
        client.close()


def test_a_huge_after_seq_on_the_socket_is_a_bad_frame_and_the_socket_goes_on(shared: Relay, open_ws: OpenWs) -> None:
    task = shared.client.submit("echo", {"live": True}, body={"websocket": True})
    ws = open_ws()
    ws.subscribe(task, after_seq=9223372036854775809)
    error = ws.recv()
    assert error["type"] == "error"
    assert error["code"] == "bad_frame"
    ws.send_raw(nested(30_000))
    assert ws.recv()["code"] == "bad_frame"
    ws.subscribe(task)
    frame = ws.recv()
    assert frame["type"] == "subscribed"
    assert frame["task_id"] == task["id"]


def test_refused_subscribes_count_as_bad_frames(shared: Relay, open_ws: OpenWs) -> None:
    ws = open_ws()
    for _ in range(21):
        ws.send({"type": "subscribe", "task_id": "task_nope", "token": "nope", "after_seq": 0})
    codes = [frame.get("code") for frame in ws.frames_until_closed(timeout_s=10)]
    assert codes == ["forbidden"] * 20
    assert ws.wait_closed() == 1008


def test_a_tenant_over_its_open_tasks_gets_429_until_some_end(start_relay: StartRelay) -> None:
    api = start_relay("api", RELAY_TENANT_MAX_OPEN_TASKS="3")
    client = Api(api.url)
    try:
        held = [client.submit("sleep", {"seconds": 1}) for _ in range(3)]  # no worker yet: they stay open
        refused = post_task(client, {"kind": "echo", "input": 1})
        assert "RELAY_TENANT_MAX_OPEN_TASKS" in assert_json_error(refused, 429)
        assert refused.headers["retry-after"].isdigit()
        other = post_task(client, {"kind": "echo", "input": 1}, key="key-globex")
        assert other.status_code == 202  # another tenant is not held back

        start_relay("worker", RELAY_TENANT_MAX_OPEN_TASKS="3")
        for task in held:
            assert client.wait_task(task["id"], timeout_s=30)["status"] == "succeeded"
        wait_until(lambda: post_task(client, {"kind": "echo", "input": 2}).status_code == 202, timeout_s=10)
    finally:
        client.close()


@pytest.mark.slow  # timing: waits out an idle timeout
def test_sockets_per_client_are_capped_and_idle_ones_are_closed(start_relay: StartRelay) -> None:
    # Pings every half second: the second one after the idle limit comes from a look at the sockets made after it.
    api = start_relay("api", RELAY_WS_MAX_PER_CLIENT="3", RELAY_WS_IDLE_TIMEOUT="1.5", RELAY_WS_PING_INTERVAL="0.5")
    start_relay("worker")
    client = Api(api.url)
    sockets: list[WsClient] = []
    try:
        task = client.submit("sleep", {"seconds": 0.2}, body={"websocket": True})
        follower = WsClient(api.url)
        idle_limit_at = time.monotonic() + 1.5  # the server counts from no later than this
        sockets.append(follower)
        follower.subscribe(task)
        assert follower.recv()["type"] == "subscribed"
        idle = [WsClient(api.url) for _ in range(2)]
        sockets += idle
        refused = WsClient(api.url)
        sockets.append(refused)
        assert refused.wait_closed(5) == 1013  # the fourth from one address

        for ws in idle:  # following nothing: closed once the idle limit has passed
            assert ws.wait_closed(10) == 1008
        # Each ping answered after its idle limit was sent by a later look at the socket, one that would have closed
        # it had it been idle (a look closes an idle socket before it pings it).
        wait_until(
            lambda: sum(1 for at in follower.ping_times if at > idle_limit_at) >= 2 or follower.closed.is_set(),
            timeout_s=10,
            message="two pings to the follower after its idle limit",
        )
        assert not follower.closed.is_set()  # following a task is not idle
        follower.send({"type": "unsubscribe", "task_id": task["id"]})
        assert follower.wait_closed(10) == 1008

        again = WsClient(api.url)  # the closed ones no longer count
        sockets.append(again)
        again.subscribe(task)
        assert again.recv()["type"] == "subscribed"
    finally:
        for ws in sockets:
            ws.close()
        client.close()


@pytest.mark.slow  # timing: waits out the request timeout
def test_connections_that_do_not_finish_their_request_in_time_are_closed(start_relay: StartRelay) -> None:
    api = start_relay("api", RELAY_REQUEST_TIMEOUT="1")
    assert api.port is not None

    def closed_by_server(first_bytes: bytes) -> bool:
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            if first_bytes:
                sock.sendall(first_bytes)
            try:
                return sock.recv(1024) == b""  # the server closed it, having answered nothing
            except TimeoutError:
                return False

    assert closed_by_server(b"")  # connected and sent nothing
    assert closed_by_server(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    body_never_finished = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-acme\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"kind"'
    )
    assert closed_by_server(body_never_finished)
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:  # one header of 100 KiB
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100 * 1024)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ")
    # A request sent in time is answered, and its connection kept alive for the next.
    with httpx.Client(base_url=api.url) as client:
        assert client.get("/health").status_code == 200
        time.sleep(1.5)
        assert client.get("/health", headers={"X-Fits": "b" * 30_000}).status_code == 200


def test_the_openapi_document_names_the_error_answers_and_the_task_kinds(shared: Relay) -> None:
    doc = shared.client.get("/schema/openapi.json", key=None).json()
    submit = doc["paths"]["/v1/tasks"]["post"]["responses"]
    assert {"401", "413", "422", "429", "503"} <= set(submit)
    assert submit["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"404", "409"} <= set(doc["paths"]["/v1/tasks/{task_id}"]["get"]["responses"])
    kind = doc["components"]["schemas"]["TaskSubmission"]["properties"]["kind"]
    assert kind["enum"] == ["echo", "fail", "sleep"]


def test_an_empty_body_is_a_422_that_says_so(shared: Relay) -> None:
    for path in ("/v1/tasks", "/v1/dead-letters/replay"):
        key = "admin-token" if "dead" in path else "key-acme"
        response = shared.client.post(path, content=b"", key=key, headers={"content-type": "application/json"})
        assert "empty" in assert_json_error(response, 422)
    # Operations that take no body still need none.
    assert shared.client.post("/v1/signing-secret/rotate").status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_a_415_that_says_what_to_send(
    shared: Relay, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    body = '{"kind": "echo", "input": 1}'
    for path, key in (("/v1/tasks", "key-acme"), ("/v1/dead-letters/replay", "admin-token")):
        response = shared.client.post(path, content=body, key=key, headers=headers)
        assert "content-type: application/json" in assert_json_error(response, 415)
    # A JSON media type with parameters, or a +json one, is JSON.
    for declared in ("application/json; charset=utf-8", "application/vnd.relay+json"):
        assert shared.client.post("/v1/tasks", content=body, headers={"content-type": declared}).status_code == 202


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("{}", ["the body", "`kind`"]),
        ('{"input": 1}', ["the body", "`kind`"]),
        ('{"kind": "echo", "webhook": {}}', ["webhook", "`url`"]),
        ("[1]", ["the body", "object"]),
    ],
)
def test_a_422_says_which_field_is_missing_or_wrong(shared: Relay, body: str, names: list[str]) -> None:
    detail = assert_json_error(shared.client.post("/v1/tasks", content=body, headers=JSON), 422)
    assert "Validation failed" not in detail
    for name in names:
        assert name in detail


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/dead-letters?limit=abc", "query parameter limit"),
        ("/v1/tasks/task_x/events?after_seq=-5", "query parameter after_seq"),
    ],
)
def test_a_bad_query_parameter_is_named_plainly(shared: Relay, path: str, name: str) -> None:
    detail = assert_json_error(shared.client.get(path, key="admin-token"), 422)
    assert detail.startswith(name), detail
    assert "ParamType" not in detail


def test_a_declared_length_over_the_limit_is_a_413_before_the_body_is_read(shared: Relay) -> None:
    with socket.create_connection(("127.0.0.1", shared.api.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-acme\r\n"
            b"content-type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        # The whole answer comes within the socket timeout, though nothing of the body was sent.
        answer = b""
        while b"RELAY_MAX_BODY_BYTES" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"RELAY_MAX_BODY_BYTES" in answer


def test_a_body_that_is_not_json_is_a_400_that_says_so(shared: Relay) -> None:
    detail = assert_json_error(shared.client.post("/v1/tasks", content='{"kind": "echo",', headers=JSON), 400)
    assert "not valid JSON" in detail


def test_a_body_over_the_limit_is_a_413_that_names_the_limit(shared: Relay) -> None:
    body = json.dumps({"kind": "echo", "input": "x" * 300_000})
    detail = assert_json_error(shared.client.post("/v1/tasks", content=body, headers=JSON), 413)
    assert "RELAY_MAX_BODY_BYTES" in detail
    assert "262144" in detail


def test_a_private_callback_address_is_a_422_that_names_the_setting(start_relay: StartRelay) -> None:
    api = Api(start_relay("api", RELAY_ALLOW_PRIVATE_CALLBACKS="false").url)
    try:
        response = api.post("/v1/tasks", json={"kind": "echo", "webhook": {"url": "http://127.0.0.1:9/hook"}})
    finally:
        api.close()
    detail = assert_json_error(response, 422)
    assert "RELAY_ALLOW_PRIVATE_CALLBACKS=true" in detail
    assert "--allow-private-callbacks" in detail


def test_a_422_quotes_a_huge_bad_value_only_in_part(shared: Relay) -> None:
    bad = "task." + "x" * 200_000
    response = shared.client.post(
        "/v1/tasks", json={"kind": "echo", "webhook": {"url": "http://127.0.0.1:9/x", "events": [bad]}}
    )

    assert response.status_code == 422
    assert "webhook.events" in response.json()["detail"]
    assert len(response.content) < 10_000


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("websocket", 1, "expected `bool`, got `int`"),
        ("websocket", "true", "expected `bool`, got `str`"),
        ("delay_s", "5", "got `str`"),
        ("run_at", 12345, "RFC 3339"),
        ("run_at", 1.5e9, "RFC 3339"),
    ],
)
def test_a_submission_field_of_the_wrong_json_type_is_a_422_naming_the_field(
    shared: Relay, field: str, value: object, expected: str
) -> None:
    before = len(shared.client.get("/v1/tasks", params={"limit": 500}).json()["items"])
    response = post_task(shared.client, {"kind": "echo", "input": 1, field: value})
    detail = assert_json_error(response, 422)
    assert detail.startswith(f"{field}: "), detail
    assert expected in detail, detail
    assert len(shared.client.get("/v1/tasks", params={"limit": 500}).json()["items"]) == before  # nothing stored


def test_the_right_json_types_of_those_fields_are_still_accepted(shared: Relay) -> None:
    for extra in ({"websocket": True}, {"delay_s": 0}, {"delay_s": 0.5}, {"run_at": "2020-01-01T00:00:00Z"}):
        response = post_task(shared.client, {"kind": "echo", "input": 1, **extra})
        assert response.status_code == 202, (extra, response.text)


@pytest.mark.parametrize(
    ("body", "field", "expected"),
    [
        ({"dry_run": "false"}, "dry_run", "expected `bool`, got `str`"),  # a real replay, had it been guessed
        ({"dry_run": 0}, "dry_run", "expected `bool`, got `int`"),
        ({"dry_run": True, "since": 1700000000}, "since", "RFC 3339"),
    ],
)
def test_a_bulk_replay_field_of_the_wrong_json_type_is_a_422_naming_the_field(
    shared: Relay, body: dict[str, object], field: str, expected: str
) -> None:
    response = shared.client.post("/v1/dead-letters/replay", json=body, key="admin-token")
    detail = assert_json_error(response, 422)
    assert detail.startswith(f"{field}: "), detail
    assert expected in detail, detail


def test_destination_caps_of_the_wrong_json_type_are_a_422_and_change_nothing(
    shared: Relay, receiver: Receiver
) -> None:
    api = shared.client
    task = api.wait_task(api.submit("echo", "caps", webhook=receiver.url("/caps"))["id"])
    receiver.wait_for("/caps")
    destination = next(d for d in api.get("/v1/destinations").json()["items"] if str(receiver.port) in d["origin"])
    for body, field in (({"max_in_flight": "7"}, "max_in_flight"), ({"rate_per_s": "2.5"}, "rate_per_s")):
        response = api.request("PATCH", f"/v1/destinations/{destination['id']}", json=body)
        detail = assert_json_error(response, 422)
        assert detail.startswith(f"{field}: "), detail
    after = api.get(f"/v1/destinations/{destination['id']}").json()
    assert (after["max_in_flight"], after["rate_per_s"]) == (destination["max_in_flight"], destination["rate_per_s"])
    assert task["status"] == "succeeded"
