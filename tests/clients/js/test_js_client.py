"""@relay/client (clients/js) against a real Relay: its ``node --test`` files, its types under ``tsc``, the types
against the OpenAPI document, the README's example as written, and the browser subscriber as the server ships it.

One API, one worker and one receiver serve the whole module. Each node test file runs as one test here; a file that
needs something only this side can do (restart the API, freeze Redis) asks for it by writing a file named after the
request into ``RELAY_CONTROL_DIR`` and waits for ``<name>.done`` (see clients/js/test/support.js).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CI, RedisServer
from tests.integration.conftest import Relay, relay_for_many_tests
from tests.support import ROOT, Receiver, run_receiver

pytestmark = pytest.mark.integration

JS = ROOT / "clients" / "js"
NODE = shutil.which("node")
TSC = JS / "node_modules" / ".bin" / "tsc"
# Each test of this module keeps to a tenant of its own where what it counts could be another test's.
TENANTS = ("acme", "globex", "initech", "hooli")
API_KEYS = ",".join(f"{tenant}=key-{tenant}" for tenant in TENANTS)
# Long enough that the API's commands (2 s) and the broker client's reads (5 s) give up during it.
FREEZE_S = 6.0
# How long one node test file may take, its waits on Relay included.
NODE_TIMEOUT_S = 90.0


# The oldest Node the package supports (package.json's engines).
MIN_NODE_MAJOR = 20


@functools.cache
def _node_problem() -> str | None:
    if NODE is None:
        return "node is not on PATH"
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < MIN_NODE_MAJOR:
        return f"node {version} is older than the {MIN_NODE_MAJOR} the package needs"
    if not TSC.exists():
        return f"{TSC} is missing (scripts/setup runs npm ci there)"
    return None


def _need_node() -> None:
    why = _node_problem()
    if why is not None:
        if CI:
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with run_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer) -> Iterator[Relay]:
    with relay_for_many_tests(redis_server, RELAY_API_KEYS=API_KEYS) as relay:
        yield relay


Handlers = Mapping[str, Callable[[], object]]


def run_node(test_file: str, relay: Relay, receiver: Receiver, *, handlers: Handlers | None = None, **env: str) -> str:
    """Run one ``node --test`` file against ``relay``; its output, or a failure that shows it."""
    _need_node()
    assert NODE is not None
    control = Path(tempfile.mkdtemp(prefix="relay-js-control-"))
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
        "RELAY_URL": relay.api.url,
        "RELAY_API_KEY": "key-acme",
        "RELAY_ADMIN_TOKEN": "admin-token",
        "RELAY_RECEIVER_URL": receiver.url(""),
        "RELAY_CONTROL_DIR": str(control),
        **env,
    }
    process = subprocess.Popen(
        [NODE, "--test", "--test-reporter=spec", f"test/{test_file}"],
        cwd=JS,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + NODE_TIMEOUT_S
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"node --test {test_file} ran longer than {NODE_TIMEOUT_S:g} s:\n{''.join(output)}")
            for name, handler in (handlers or {}).items():
                request = control / name
                if request.exists():
                    request.unlink()
                    handler()
                    (control / f"{name}.done").touch()
            time.sleep(0.05)
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        shutil.rmtree(control, ignore_errors=True)
    text = "".join(output)
    assert process.returncode == 0, f"node --test {test_file} failed:\n{text}"
    return text


def test_tasks_submit_wait_list_cancel(shared: Relay, receiver: Receiver) -> None:
    run_node("tasks.test.js", shared, receiver)


def test_requests_retry_only_when_safe(shared: Relay, receiver: Receiver) -> None:
    # Against a fetch of the test's own: which answers are retried, with which key, after how long.
    run_node("retries.test.js", shared, receiver)


def test_answers_and_webhooks_that_are_not_relays_stay_bounded(shared: Relay, receiver: Receiver) -> None:
    # Against servers of the test's own: huge answers, endless streams, redirects, endless cursors, hostile webhooks.
    run_node("hostile.test.js", shared, receiver)


@pytest.mark.slow  # the API process restarted under the stream
def test_stream_resumes_across_an_api_restart_without_loss_or_repeat(shared: Relay, receiver: Receiver) -> None:
    run_node("stream.test.js", shared, receiver, handlers={"restart-api": shared.api.restart})


def test_dead_letters_bulk_replay_with_dry_run(shared: Relay, receiver: Receiver) -> None:
    receiver.script("/gone", 410)
    run_node("dead-letters.test.js", shared, receiver, RELAY_API_KEY="key-globex")


def test_destinations_pause_resume_and_caps(shared: Relay, receiver: Receiver) -> None:
    run_node("destinations.test.js", shared, receiver)


@pytest.mark.slow
def test_submissions_while_redis_is_frozen_are_stored_once_each(
    shared: Relay, receiver: Receiver, redis_server: RedisServer
) -> None:
    thawed = threading.Event()

    def freeze() -> None:
        redis_server.freeze()

        def thaw() -> None:
            time.sleep(FREEZE_S)
            redis_server.thaw()
            thawed.set()

        threading.Thread(target=thaw, daemon=True).start()

    try:
        run_node("freeze.test.js", shared, receiver, handlers={"freeze": freeze}, RELAY_API_KEY="key-initech")
    finally:
        if not thawed.wait(FREEZE_S + 5):
            redis_server.thaw()
    assert thawed.is_set(), "the node side never asked for the freeze"


def test_verify_webhook_on_real_webhooks(shared: Relay, receiver: Receiver, tmp_path: Path) -> None:
    api = shared.client
    key = "key-hooli"
    old_secret = api.get("/v1/signing-secret", key=key).json()["secret"]
    before = api.submit("echo", {"signed": "once"}, webhook=receiver.url("/verify/before"), key=key)
    (plain,) = receiver.wait_for("/verify/before")
    new_secret = api.post("/v1/signing-secret/rotate", key=key).json()["secret"]
    during = api.submit("echo", {"signed": "twice"}, webhook=receiver.url("/verify/during"), key=key)
    (rotating,) = receiver.wait_for("/verify/during")
    signatures = next(v for k, v in rotating.headers.items() if k.lower() == "webhook-signature")
    assert len(signatures.split(" ")) == 2  # two secrets live: two signatures

    webhooks = {
        "before": {"task_id": before["id"], "body": base64.b64encode(plain.body).decode(), "headers": plain.headers},
        "during": {
            "task_id": during["id"],
            "body": base64.b64encode(rotating.body).decode(),
            "headers": rotating.headers,
        },
        "old_secret": old_secret,
        "new_secret": new_secret,
    }
    captured = tmp_path / "webhooks.json"
    captured.write_text(json.dumps(webhooks))
    run_node("verify.test.js", shared, receiver, RELAY_WEBHOOKS_FILE=str(captured))


def test_types_compile_and_the_usage_file_type_checks() -> None:
    _need_node()
    checked = subprocess.run([str(TSC), "--noEmit", "-p", str(JS)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, f"tsc --noEmit failed:\n{checked.stdout}{checked.stderr}"


def test_the_sources_are_formatted() -> None:
    # Prettier at 120 columns (clients/js/.prettierrc.json), as ruff formats the Python: `npx prettier --write .`.
    _need_node()
    prettier = JS / "node_modules" / ".bin" / "prettier"
    checked = subprocess.run([str(prettier), "--check", "."], cwd=JS, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, (
        f"prettier --check (run `npx prettier --write .` in clients/js):\n{checked.stdout}{checked.stderr}"
    )


def test_wire_types_match_the_openapi_document(shared: Relay) -> None:
    _need_node()
    assert NODE is not None
    document = httpx.get(shared.api.url + "/schema/openapi.json", timeout=10).json()
    schemas: dict[str, Any] = document["components"]["schemas"]
    shapes = json.loads(
        subprocess.run(
            [NODE, "scripts/wire-shapes.js"], cwd=JS, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    drift = wire_drift(shapes, schemas)
    assert drift == [], "clients/js/src/wire.d.ts and the OpenAPI document disagree:\n  " + "\n  ".join(drift)
    # The check itself: the contract's wire objects are all among what it compared.
    assert {"Task", "Event", "Attempt", "DeadLetter", "Destination", "Stats", "TaskPage", "EventList"} <= set(
        shapes["interfaces"]
    )


# Interfaces of wire.d.ts that are no component of the document (the stream's first message is not in it).
NOT_IN_DOCUMENT = {"Subscribed"}


def wire_drift(shapes: Mapping[str, Any], schemas: Mapping[str, Any]) -> list[str]:
    """What differs between the TypeScript shapes and the component schemas, one line each."""
    drift: list[str] = []
    for name, properties in shapes["interfaces"].items():
        if name in NOT_IN_DOCUMENT:
            continue
        schema = schemas.get(name)
        if schema is None:
            drift.append(f"interface {name}: no component schema {name}")
            continue
        declared = schema.get("properties", {})
        required = set(schema.get("required", []))
        for prop in sorted(set(declared) - set(properties)):
            drift.append(f"{name}.{prop}: in the document, not in the interface")
        for prop in sorted(set(properties) - set(declared)):
            drift.append(f"{name}.{prop}: in the interface, not in the document")
        for prop in sorted(set(properties) & set(declared)):
            optional = properties[prop]["optional"]
            if optional == (prop in required):
                should = "optional" if prop not in required else "required"
                drift.append(f"{name}.{prop}: {should} in the document, not in the interface")
            if properties[prop]["nullable"] != _nullable(declared[prop]):
                drift.append(f"{name}.{prop}: nullable {_nullable(declared[prop])} in the document")
    for name, values in shapes["enums"].items():
        schema = schemas.get(name)
        if schema is None:
            drift.append(f"type {name}: no component schema {name}")
        elif sorted(values) != sorted(schema.get("enum", [])):
            drift.append(f"type {name}: {sorted(values)} here, {sorted(schema.get('enum', []))} in the document")
    return drift


def _nullable(schema: Mapping[str, Any]) -> bool:
    if schema.get("type") == "null" or (isinstance(schema.get("type"), list) and "null" in schema["type"]):
        return True
    return any(_nullable(option) for option in (*schema.get("oneOf", ()), *schema.get("anyOf", ())))


def test_wire_drift_names_what_differs() -> None:
    # The comparison above, on a document that moved away from the types: each difference is named.
    shapes = {
        "interfaces": {
            "Task": {"id": {"optional": False, "nullable": False}, "old": {"optional": True, "nullable": False}}
        },
        "enums": {"TaskStatus": ["queued"]},
    }
    schemas = {
        "Task": {
            "properties": {"id": {"oneOf": [{"type": "string"}, {"type": "null"}]}, "new": {"type": "string"}},
            "required": [],
        },
        "TaskStatus": {"enum": ["queued", "paused"]},
    }
    assert wire_drift(shapes, schemas) == [
        "Task.new: in the document, not in the interface",
        "Task.old: in the interface, not in the document",
        "Task.id: optional in the document, not in the interface",
        "Task.id: nullable True in the document",
        "type TaskStatus: ['queued'] here, ['paused', 'queued'] in the document",
    ]


def readme_examples() -> list[tuple[str, str]]:
    """The JavaScript examples of the "Use it from your code" sections of the top README and clients/js/README.md,
    as (where, code)."""
    found = []
    for readme in (ROOT / "README.md", JS / "README.md"):
        text = readme.read_text()
        if "## Use it from your code" not in text:
            continue
        section = text.split("## Use it from your code", 1)[1].split("\n## ", 1)[0]
        for code in re.findall(r"```(?:js|javascript|ts|typescript)\n(.*?)```", section, re.DOTALL):
            if "@relay/client" in code:
                found.append((str(readme.relative_to(ROOT)), code))
    return found


def test_readme_example_runs_as_written(shared: Relay, tmp_path: Path) -> None:
    _need_node()
    assert NODE is not None
    examples = readme_examples()
    for readme in ("README.md", "clients/js/README.md"):
        assert any(where == readme for where, _ in examples), f"no example in {readme}"
    # As an integrator has it: the package installed under node_modules, the example in a file of their own.
    (tmp_path / "node_modules" / "@relay").mkdir(parents=True)
    (tmp_path / "node_modules" / "@relay" / "client").symlink_to(JS)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
        "RELAY_URL": shared.api.url,
        "RELAY_API_KEY": "key-acme",
    }
    for n, (where, code) in enumerate(examples):
        example = tmp_path / f"example{n}.mjs"
        example.write_text(code)
        ran = subprocess.run([NODE, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, f"the example of {where} failed:\n{ran.stdout}{ran.stderr}"
        assert "succeeded" in ran.stdout, f"{where}: {ran.stdout}"


def test_the_server_ships_the_subscriber_itself(tmp_path: Path) -> None:
    # One source: /static/relay.js is a link to the package's subscriber, and a wheel (pip install ., not editable)
    # carries the file's content rather than a link that would point nowhere.
    static = ROOT / "service" / "api" / "static" / "relay.js"
    subscriber = JS / "src" / "subscriber.js"
    assert static.is_symlink()
    assert static.resolve() == subscriber.resolve()
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for package in ("service", "delivery", "schemas"):
        shutil.copytree(ROOT / package, tree / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(JS / "src", tree / "clients" / "js" / "src")
    built = subprocess.run(
        [sys.executable, "-c", f"import setuptools.build_meta as b; b.build_wheel({str(tmp_path)!r})"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("service/api/static/relay.js")
    assert shipped == subscriber.read_bytes()
