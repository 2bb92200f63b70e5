"""The OpenAPI document of a real `relay api`, as a code generator and a person use it: valid OpenAPI 3.1, a stable
readable id and one described tag per operation, the tokens each operation takes (checked against what the API
answers), examples that fit their schemas, the webhooks Relay sends (checked against webhooks a receiver got), and a
client generated from it that submits a task and reads it back."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.support import Receiver, wait_until

pytestmark = pytest.mark.integration

# Every operation the document holds, and its id: a route added without an id of its own (Litestar makes one up
# from the path) or an id changed under a generated client's feet fails here.
OPERATION_IDS = {
    ("POST", "/v1/tasks"): "tasks_submit",
    ("GET", "/v1/tasks"): "tasks_list",
    ("GET", "/v1/tasks/{task_id}"): "tasks_get",
    ("POST", "/v1/tasks/{task_id}/cancel"): "tasks_cancel",
    ("GET", "/v1/tasks/{task_id}/events"): "tasks_events",
    ("GET", "/v1/tasks/{task_id}/deliveries"): "tasks_deliveries",
    ("GET", "/v1/tasks/{task_id}/stream"): "tasks_stream",
    ("GET", "/v1/dead-letters"): "dead_letters_list",
    ("GET", "/v1/dead-letters/{dl_id}"): "dead_letters_get",
    ("POST", "/v1/dead-letters/{dl_id}/replay"): "dead_letters_replay",
    ("POST", "/v1/dead-letters/replay"): "dead_letters_replay_bulk",
    ("DELETE", "/v1/dead-letters/{dl_id}"): "dead_letters_delete",
    ("GET", "/v1/destinations"): "destinations_list",
    ("GET", "/v1/destinations/{destination_id}"): "destinations_get",
    ("PATCH", "/v1/destinations/{destination_id}"): "destinations_update",
    ("POST", "/v1/destinations/{destination_id}/pause"): "destinations_pause",
    ("POST", "/v1/destinations/{destination_id}/resume"): "destinations_resume",
    ("GET", "/v1/stats"): "stats_get",
    ("GET", "/v1/signing-secret"): "signing_secret_get",
    ("POST", "/v1/signing-secret/rotate"): "signing_secret_rotate",
    ("GET", "/v1/ops/signing-secret"): "ops_signing_secret_get",
    ("GET", "/v1/ops/cluster"): "ops_cluster_get",
    ("POST", "/v1/ops/store/acknowledge"): "ops_store_acknowledge",
    ("GET", "/health"): "health",
    ("GET", "/ready"): "ready",
    ("GET", "/metrics"): "metrics",
}
READABLE_ID = re.compile(r"^[a-z]+(_[a-z]+)*$")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
TENANT_KEY, ADMIN_TOKEN = "key-acme", "admin-token"
# Ids of the right shapes that name nothing: an operation that accepts a token answers them 404, not 401 or 403.
UNKNOWN_IDS = {
    "task_id": "task_aaaaaaaaaaaaaaaaaaaaaaaa",
    "dl_id": "dl_aaaaaaaaaaaaaaaaaaaaaaaa",
    "destination_id": "dst_aaaaaaaaaaaaaaaaaaaaaaaa",
}
TASK_EVENT_TYPES = {"task.completed", "task.failed", "task.cancelled", "task.progress", "task.retrying"}
STANDARD_WEBHOOK_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature"}
GENERIC_DESCRIPTIONS = {status.description for status in HTTPStatus}
ERROR = {"$ref": "#/components/schemas/ErrorBody"}
GENERATE = [sys.executable, "-m", "openapi_python_client", "generate"]


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    # The test kinds bring one that retries (task.retrying); the document then names them among the kinds.
    with relay_for_many_tests(redis_server, RELAY_TASK_MODULES="tests.kinds_for_tests") as relay:
        yield relay


@pytest.fixture(scope="module")
def document(shared: Relay) -> dict[str, Any]:
    response = shared.client.get("/schema/openapi.json", key=None)
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any], section: str = "paths") -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get(section, {}).items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises, saying where, for a document that is not


def test_every_operation_has_its_stable_readable_id(document: dict[str, Any]) -> None:
    ids = {(method, path): operation.get("operationId") for method, path, operation in operations(document)}
    assert ids == OPERATION_IDS
    webhook_ids = [operation["operationId"] for _, _, operation in operations(document, "webhooks")]
    every_id = [*ids.values(), *webhook_ids]
    assert len(set(every_id)) == len(every_id), "operation ids must be unique"
    assert [i for i in every_id if not READABLE_ID.match(i or "")] == []


def test_the_pages_stay_out_of_the_document(document: dict[str, Any]) -> None:
    pages = [p for p in document["paths"] if p in ("/", "/console", "/v1/ws") or p.startswith(("/schema", "/static"))]
    assert pages == []


def test_every_operation_has_one_tag_and_every_tag_a_sentence(document: dict[str, Any]) -> None:
    described = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    assert set(described) == {
        "tasks",
        "dead letters",
        "destinations",
        "stats",
        "signing secret",
        "operations",
        "health",
        "webhooks",
    }
    assert [name for name, text in described.items() if not text.endswith(".")] == []
    used = set()
    for section in ("paths", "webhooks"):
        for method, path, operation in operations(document, section):
            assert len(operation.get("tags", [])) == 1, f"{method} {path}: {operation.get('tags')}"
            used.add(operation["tags"][0])
            assert operation.get("summary"), f"{method} {path} has no summary"
            for status, response in operation["responses"].items():
                # Litestar's default is the status's phrase ("Request fulfilled, document follows"): say what it is.
                assert response["description"] not in GENERIC_DESCRIPTIONS, f"{method} {path} {status}"
    assert used == set(described)
    tags = {path: operation["tags"][0] for _, path, operation in operations(document)}
    assert tags["/v1/signing-secret"] == tags["/v1/signing-secret/rotate"] == "signing secret"
    assert tags["/v1/stats"] == "stats"
    assert {tags["/health"], tags["/ready"], tags["/metrics"]} == {"health"}
    assert {tags[p] for p in tags if p.startswith("/v1/ops/")} == {"operations"}


def _call(shared: Relay, document: dict[str, Any], method: str, path: str, token: str | None) -> httpx.Response:
    operation = document["paths"][path][method.lower()]
    url = path.format(**UNKNOWN_IDS)
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs["json"] = next(iter(example_values(body)))
    return shared.client.request(method, url, key=token, **kwargs)


def test_each_operation_takes_the_tokens_it_declares_and_refuses_the_others(
    shared: Relay, document: dict[str, Any]
) -> None:
    """What a generated client's auth and Swagger's "Authorize" rely on: an operation that declares no security
    answers without a token; one that does answers 401 without one, 403 to a known token it does not list, and
    neither to one it lists."""
    schemes = document["components"]["securitySchemes"]
    wrong: list[str] = []
    for method, path, operation in operations(document):
        security = operation.get("security")
        assert security is not None, f"{method} {path} does not say which tokens it takes"
        names = {name for alternative in security for name in alternative}
        assert names <= set(schemes)
        if path.startswith("/v1/ops/"):
            assert names == {"adminToken"}, f"{method} {path}"
        responses = {
            None: _call(shared, document, method, path, None),
            "tenantKey": _call(shared, document, method, path, TENANT_KEY),
            "adminToken": _call(shared, document, method, path, ADMIN_TOKEN),
        }
        answers = {token: response.status_code for token, response in responses.items()}
        for response in responses.values():  # each answer one the document names, an error an ErrorBody
            if str(response.status_code) not in operation["responses"]:
                wrong.append(f"{method} {path} answered {response.status_code}, which it does not declare")
            elif response.status_code >= 400 and path != "/ready":
                wrong += [
                    f"{method} {path} {response.status_code}: {p}" for p in misfits(document, ERROR, response.json())
                ]
        if not security:
            if answers[None] in (401, 403):
                wrong.append(f"{method} {path} declares no token but answered {answers[None]} without one")
            continue
        if answers[None] != 401:
            wrong.append(f"{method} {path} answered {answers[None]} without a token")
        for scheme in ("tenantKey", "adminToken"):
            expected_refusal = scheme not in names
            if expected_refusal and answers[scheme] != 403:
                wrong.append(f"{method} {path} does not list {scheme} but answered it {answers[scheme]}")
            if not expected_refusal and answers[scheme] in (401, 403):
                wrong.append(f"{method} {path} lists {scheme} but answered it {answers[scheme]}")
    assert wrong == []


def test_a_task_token_reads_what_the_document_says_it_does(shared: Relay, document: dict[str, Any]) -> None:
    task = shared.client.submit("echo", {"n": 1})
    token = task["ws_token"]
    for method, path, operation in operations(document):
        if "{task_id}" not in path and path != "/v1/tasks":
            continue
        names = {name for alternative in operation["security"] for name in alternative}
        url = path.format(task_id=task["id"])
        if method == "GET" and path.endswith("/stream"):
            shared.client.wait_task(task["id"])  # a stream of an ended task ends at once
        by_bearer = shared.client.request(method, url, key=token).status_code
        assert (by_bearer < 400) == ("taskBearer" in names), f"{method} {path} answered a ws_token bearer {by_bearer}"
        by_query = shared.client.request(method, url, key=None, params={"token": token}).status_code
        assert (by_query < 400) == ("taskToken" in names), f"{method} {path} answered ?token= {by_query}"


def example_values(media: dict[str, Any]) -> list[Any]:
    """The examples of a media type or parameter: its own (``examples`` or ``example``) and its schema's."""
    found = [example["value"] for example in media.get("examples", {}).values()]
    if "example" in media:
        found.append(media["example"])
    found.extend(media.get("schema", {}).get("examples", []))
    return found


def misfits(document: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """How ``value`` fails ``schema`` (OpenAPI 3.1's JSON Schema, formats checked); its ``$ref``s into the
    document's components resolve because the components ride along at the root."""
    validator = OAS31Validator({**schema, "components": document["components"]}, format_checker=oas31_format_checker)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def test_every_body_has_examples_that_fit_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    problems: list[str] = []
    for section in ("paths", "webhooks"):
        for method, path, operation in operations(document, section):
            where = f"{method} {path}"
            bodies = [("request", m) for m in operation.get("requestBody", {}).get("content", {}).values()]
            for status, response in operation["responses"].items():
                bodies += [(status, m) for m in response.get("content", {}).values()]
            for what, media in bodies:
                values = example_values(media)
                if not values:
                    problems.append(f"{where} {what}: no example")
                for value in values:
                    checked += 1
                    problems += [f"{where} {what}: {p}" for p in misfits(document, media.get("schema", {}), value)]
                    if what.isdigit() and int(what) >= 400 and media["schema"].get("$ref", "").endswith("/ErrorBody"):
                        assert value["status_code"] == int(what), f"{where} {what}: {value}"
            for parameter in operation.get("parameters", []):
                for value in example_values(parameter):
                    checked += 1
                    problems += [
                        f"{where} {parameter['name']}: {p}" for p in misfits(document, parameter["schema"], value)
                    ]
    assert problems == [], "\n".join(problems)
    assert checked > 80


def test_an_example_that_does_not_fit_is_caught(document: dict[str, Any]) -> None:
    """The check above can fail: a task example with a wrong status, a missing field and a time that is not one."""
    task = {"$ref": "#/components/schemas/Task"}
    example = document["paths"]["/v1/tasks/{task_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    good = next(iter(example_values(example)))
    assert misfits(document, task, good) == []
    assert misfits(document, task, {**good, "status": "done"})
    assert misfits(document, task, {k: v for k, v in good.items() if k != "kind"})
    assert misfits(document, task, {**good, "created_at": "yesterday"})


def test_every_error_answer_is_an_error_body(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or path == "/ready":  # /ready's 503 is its checks, as its 200
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path} {status}"


def test_the_webhooks_section_describes_every_event_relay_posts(document: dict[str, Any]) -> None:
    webhooks = document["webhooks"]
    assert set(webhooks) == TASK_EVENT_TYPES | {"destination.opened", "destination.recovered"}
    for name, item in webhooks.items():
        post = item["post"]
        headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
        assert set(headers) >= STANDARD_WEBHOOK_HEADERS, name
        assert all(headers[h]["required"] and headers[h]["description"] for h in STANDARD_WEBHOOK_HEADERS)
        assert "2XX" in post["responses"], name
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        if name in TASK_EVENT_TYPES:
            assert {"$ref": "#/components/schemas/Event"} in schema["allOf"]
            assert "endpoint_gone" in post["responses"]["410"]["description"]
            assert "Retry-After" in post["responses"]["429"]["description"]


def test_each_webhook_example_is_signed_as_the_document_says(document: dict[str, Any]) -> None:
    """A receiver's author can check their verification against the document alone: each webhook's example headers
    sign its example body (compact JSON) with the example secret of the route that gives the secret."""

    def secret_of(path: str) -> str:
        answer = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        return str(example_values(answer)[0]["secret"])

    for name, item in document["webhooks"].items():
        post = item["post"]
        secret = secret_of("/v1/ops/signing-secret" if name.startswith("destination.") else "/v1/signing-secret")
        (body,) = example_values(post["requestBody"]["content"]["application/json"])
        headers = {p["name"]: p["example"] for p in post["parameters"]}
        assert headers["webhook-id"] == body["id"]
        sent_at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        expected = standardwebhooks.Webhook(secret).sign(body["id"], sent_at, payload)
        assert headers["webhook-signature"] == expected, name


def test_the_webhooks_a_receiver_gets_are_the_ones_described(
    shared: Relay, document: dict[str, Any], receiver: Receiver
) -> None:
    """Real webhooks of each task event type, checked against the document: the body against its schema, each
    described header present and of its form, and the signature as the document says it is made."""
    every = ["task.progress", "task.retrying", "task.completed", "task.failed", "task.cancelled"]
    hook = {"url": receiver.url("/events"), "events": every}
    shared.client.submit("sleep", {"seconds": 2}, body={"webhook": hook})
    shared.client.submit("fail", {"message": "no such order"}, body={"webhook": hook})
    shared.client.submit("flaky", {"failures": 1}, body={"webhook": hook})
    cancelled = shared.client.submit("sleep", {"seconds": 30}, body={"webhook": hook})
    assert shared.client.post(f"/v1/tasks/{cancelled['id']}/cancel").status_code == 202

    def types_seen() -> set[str]:
        return {r.json()["type"] for r in receiver.on("/events")}

    wait_until(lambda: types_seen() == TASK_EVENT_TYPES, timeout_s=30, message=f"webhooks of {TASK_EVENT_TYPES}")
    secret = shared.client.get("/v1/signing-secret").json()["secret"]
    problems: list[str] = []
    for received in receiver.on("/events"):
        event = received.json()
        post = document["webhooks"][event["type"]]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        problems += [f"{event['type']} body: {p}" for p in misfits(document, schema, event)]
        headers = {k.lower(): v for k, v in received.headers.items()}
        for parameter in post["parameters"]:
            value = headers.get(parameter["name"])
            if value is None:
                problems.append(f"{event['type']}: no {parameter['name']} header")
                continue
            problems += [
                f"{event['type']} {parameter['name']}: {p}" for p in misfits(document, parameter["schema"], value)
            ]
        assert headers["webhook-id"] == event["id"]
        standardwebhooks.Webhook(secret).verify(received.body, headers)
    assert problems == []


def test_a_generated_client_submits_a_task_and_reads_it_back(
    shared: Relay, document: dict[str, Any], tmp_path: Path
) -> None:
    """openapi-python-client builds a client from the live document (never committed), which is then used as an
    integrator would: submit, read back until it ends, list, and an error answer as the document's ErrorBody."""
    spec = tmp_path / "openapi.json"
    spec.write_text(shared.client.get("/schema/openapi.json", key=None).text)
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run over the code: it is imported, not read
    generated = subprocess.run(
        [*GENERATE, "--path", str(spec), "--config", str(config), "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "WARNING" not in generated.stdout + generated.stderr, "the generator skipped a part of the document"
    # Named after the document's title: "Relay" would make it relay_client, and installing it would replace the
    # official client.
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["relay_api_client"]

    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("relay_api_client.client")
        submit = importlib.import_module("relay_api_client.api.tasks.tasks_submit")
        get = importlib.import_module("relay_api_client.api.tasks.tasks_get")
        list_tasks = importlib.import_module("relay_api_client.api.tasks.tasks_list")
        models = importlib.import_module("relay_api_client.models")

        with client_module.AuthenticatedClient(base_url=shared.api.url, token=TENANT_KEY) as client:
            body = models.TaskSubmission(kind=models.TaskSubmissionKind.ECHO, input_={"order": 42})
            answer = submit.sync_detailed(client=client, body=body, idempotency_key="generated-client-1")
            assert answer.status_code == 202, answer.content
            task = answer.parsed
            assert isinstance(task, models.Task)
            assert task.id.startswith("task_")
            assert task.status in (models.TaskStatus.QUEUED, models.TaskStatus.RUNNING, models.TaskStatus.SUCCEEDED)

            def ended() -> Any:
                read = get.sync(client=client, task_id=task.id)
                assert isinstance(read, models.Task), read
                return read if read.status is models.TaskStatus.SUCCEEDED else None

            done = wait_until(ended, timeout_s=20, message="the task to succeed, read by the generated client")
            assert done.result == {"order": 42}
            assert done.created_at.tzinfo is not None

            again = submit.sync(client=client, body=body, idempotency_key="generated-client-1")
            assert isinstance(again, models.Task)
            assert again.id == task.id  # the same key: the first task

            page = list_tasks.sync(client=client, kind="echo", limit=500)
            assert isinstance(page, models.TaskPage)
            assert task.id in {t.id for t in page.items}

            missing = get.sync(client=client, task_id=UNKNOWN_IDS["task_id"])
            assert isinstance(missing, models.ErrorBody)
            assert missing.status_code == 404
            assert "no task" in missing.detail
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "relay_api_client" or m.startswith("relay_api_client.")]:
            del sys.modules[name]
