"""The API's documentation pages on a real `relay api`: everything they load is served by the node itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests

pytestmark = pytest.mark.integration

REMOTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>]+""")
MEDIA_TYPES = {
    "script": "text/javascript",
    "stylesheet": "text/css",
    "icon": "image/svg+xml",
}


class Assets(HTMLParser):
    """The scripts, stylesheets and icons a page references, as (kind, URL)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            assert attributes.get("src"), "an inline script (the page's policy would refuse it)"
            self.found.append(("script", attributes["src"] or ""))
        elif tag == "link" and attributes.get("rel") in ("stylesheet", "icon"):
            self.found.append((attributes["rel"] or "", attributes.get("href") or ""))


def assets_of(page: str) -> list[tuple[str, str]]:
    parser = Assets()
    parser.feed(page)
    parser.close()
    return parser.found


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server) as relay:
        yield relay


@pytest.mark.parametrize("path", ["/schema/swagger", "/schema"])
def test_swagger_ui_loads_only_files_of_this_node(shared: Relay, path: str) -> None:
    page = shared.client.get(path, key=None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert REMOTE_URL.findall(page.text) == []

    assets = assets_of(page.text)
    assert {kind for kind, _ in assets} == set(MEDIA_TYPES)
    for kind, url in assets:
        assert url.startswith("/"), f"{url} is not a path on this node"
        response = shared.client.get(url, key=None)
        assert response.status_code == 200, f"{url}: {response.status_code}"
        assert response.headers["content-type"].startswith(MEDIA_TYPES[kind]), f"{url}: {response.headers}"
        assert response.content, f"{url} is empty"

    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "http" not in policy


def test_the_swagger_script_reads_the_document_of_this_node(shared: Relay) -> None:
    page = shared.client.get("/schema/swagger", key=None).text
    document_url = re.search(r'data-openapi-url="([^"]+)"', page)
    assert document_url is not None
    document = shared.client.get(document_url.group(1), key=None)
    assert document.status_code == 200
    assert "/v1/tasks" in document.json()["paths"]


@pytest.mark.parametrize("path", ["/schema/redoc", "/schema/rapidoc", "/schema/elements", "/schema/scalar"])
def test_renderers_that_need_a_cdn_are_not_offered(shared: Relay, path: str) -> None:
    assert shared.client.get(path, key=None).status_code == 404


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2F__init__.py", "swagger-editor.js"])
def test_only_the_files_the_page_uses_are_served(shared: Relay, name: str) -> None:
    assert shared.client.get(f"/schema/assets/{name}", key=None).status_code == 404


def test_the_document_is_also_yaml(shared: Relay) -> None:
    response = shared.client.get("/schema/openapi.yaml", key=None)
    assert response.status_code == 200
    assert "/v1/tasks:" in response.text


def test_the_document_declares_the_bearer_tokens_and_every_protected_operation_takes_them(shared: Relay) -> None:
    document = shared.client.get("/schema/openapi.json", key=None).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["tenantKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["tenantKey"]["description"],
    }
    assert schemes["adminToken"]["type"] == "http"
    assert schemes["adminToken"]["scheme"] == "bearer"
    assert schemes["taskToken"] == {**schemes["taskToken"], "type": "apiKey", "in": "query", "name": "token"}

    security = {
        (method.upper(), path): operation.get("security")
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    either = [{"tenantKey": []}, {"adminToken": []}]
    assert security[("POST", "/v1/tasks")] == [{"tenantKey": []}]  # a task is a tenant's
    assert security[("GET", "/v1/dead-letters")] == either
    assert security[("PATCH", "/v1/destinations/{destination_id}")] == either
    assert security[("GET", "/v1/tasks/{task_id}")] == [*either, {"taskBearer": []}]
    assert security[("GET", "/v1/tasks/{task_id}/stream")] == [*either, {"taskBearer": []}, {"taskToken": []}]
    assert security[("GET", "/v1/ops/signing-secret")] == [{"adminToken": []}]
    assert security[("GET", "/health")] == []
    assert security[("GET", "/ready")] == []
    # Every operation that may answer 401 names the tokens that avoid it, each one a declared scheme.
    for (method, path), required in security.items():
        if "401" in document["paths"][path][method.lower()]["responses"]:
            assert required, f"{method} {path} declares no security"
            assert {name for alternative in required for name in alternative} <= set(schemes)


def test_try_it_out_with_the_declared_scheme_is_answered(shared: Relay) -> None:
    """What Swagger UI sends once a tenant's key is typed into Authorize: Authorization: Bearer <key>."""
    document = shared.client.get("/schema/openapi.json", key=None).json()
    assert document["components"]["securitySchemes"]["tenantKey"]["scheme"] == "bearer"
    assert shared.client.get("/v1/tasks", key=None).status_code == 401
    assert shared.client.get("/v1/tasks", headers={"Authorization": "Bearer key-acme"}, key=None).status_code == 200


def test_the_submit_examples_are_accepted_as_they_stand(shared: Relay) -> None:
    """What Swagger's "Try it out" starts from is a body the API accepts (the generated one was a 422)."""
    document = shared.client.get("/schema/openapi.json", key=None).json()
    body = document["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["schema"]["examples"]
    assert len(examples) >= 3
    for example in examples:
        if example.get("webhook"):
            continue  # a receiver of the reader's own (this one does not resolve here): its shape is the point
        answer = shared.client.post("/v1/tasks", json=example)
        assert answer.status_code == 202, (example, answer.text)
