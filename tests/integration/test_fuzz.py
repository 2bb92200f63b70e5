"""Generated requests for every operation of the OpenAPI document (schemathesis's Hypothesis strategies): whatever
a client sends, within the document or just outside it, Relay answers without a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.conftest import RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests

# Examples per operation and mode (each sent with three credentials): bounded for the suite, derandomized so
# that a failure is seen again on the next run.
EXAMPLES = 50
TOKENS = ("key-acme", "admin-token", "not-a-key")  # a tenant, an operator, a stranger


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server) as relay:
        yield relay


@pytest.mark.parametrize(
    "mode",
    [
        # Both halves run in the whole suite (about 20 s each); the quick run has the API's own 422 tests.
        pytest.param(schemathesis.GenerationMode.POSITIVE, marks=pytest.mark.slow),
        pytest.param(schemathesis.GenerationMode.NEGATIVE, marks=pytest.mark.slow),
    ],
)
def test_no_generated_request_gets_a_server_error(shared: Relay, mode: schemathesis.GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{shared.api.url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    unsatisfiable = sent = 0
    with httpx.Client(base_url=shared.api.url, timeout=10) as client:
        for operation in operations:

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy(generation_mode=mode), token=st.sampled_from(TOKENS))
            def check(case: schemathesis.Case, token: str) -> None:
                kwargs = case.as_transport_kwargs(base_url=shared.api.url)
                headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
                headers["Authorization"] = f"Bearer {token}"
                response = client.request(
                    kwargs["method"],
                    kwargs["url"],
                    params=kwargs.get("params"),
                    headers=headers,
                    json=kwargs.get("json"),
                    content=kwargs.get("data") if isinstance(kwargs.get("data"), (bytes, str)) else None,
                )
                nonlocal sent
                sent += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} as {token}: {response.text[:300]}")
                elif response.status_code >= 400 and response.headers["content-type"].startswith("application/json"):
                    assert response.json()["detail"]

            try:
                check()
            except Unsatisfiable:
                # Nothing negative to make of this operation (no parameters, no body): the positive run has it.
                assert mode is schemathesis.GenerationMode.NEGATIVE
                unsatisfiable += 1
    print(f"{mode.value}: {sent} requests over {len(operations) - unsatisfiable} operations")
    assert failures == []
    assert sent >= EXAMPLES * 2  # the body and query parameters of submit, events and lists at least
