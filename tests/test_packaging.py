"""How Relay installs: what ``scripts/setup`` builds (an editable install of this tree), and what ``pip install .``
builds (a wheel that carries the client library its ``relay`` CLI is built on), beside the client's own wheel."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from service.processes import free_port
from tests.support import ROOT

CLIENT = ROOT / "clients" / "python"
# What a fresh clone does not hold: a wheel built from a copy without them holds only what the sources say (a
# build/lib left by an earlier build would put a module since removed into the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "*_cache", ".relay", "node_modules"
)


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources, to build wheels from without writing into the tree or reading what it left."""
    tree = tmp_path_factory.mktemp("tree") / "relay"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCES)
    return tree


def _build(hook: str, out: Path, *, project: Path = ROOT) -> Path:
    """Run one hook of the build backend in ``project`` with every warning an error, but setuptools' notices
    (``InformationOnly``: it can tell a person something only as a warning), so that a fresh setup prints nothing but
    real errors; return the wheel."""
    code = (
        "import warnings; from setuptools.warnings import InformationOnly; "
        "warnings.filterwarnings('ignore', category=InformationOnly); "
        f"import setuptools.build_meta as b; print(b.{hook}({str(out)!r}))"
    )
    built = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return out / built.stdout.strip().splitlines()[-1]


def test_the_editable_install_builds_without_a_warning_and_imports_every_package_from_this_tree(
    tmp_path: Path,
) -> None:
    wheel = _build("build_editable", tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        (finder,) = [name for name in archive.namelist() if name.endswith("_finder.py")]
        source = archive.read(finder).decode()
    found = re.search(r"^MAPPING[^=]*= (\{.*\})$", source, re.MULTILINE)
    assert found, source[:2000]
    # Each package is its folder in the tree, as it is edited; the client library its own distribution's folder.
    assert ast.literal_eval(found.group(1)) == {
        "service": str(ROOT / "service"),
        "delivery": str(ROOT / "delivery"),
        "schemas": str(ROOT / "schemas"),
        "relay_client": str(CLIENT / "src" / "relay_client"),
    }


def test_the_wheel_carries_the_client_library_as_its_own_wheel_has_it(tmp_path: Path, clean_tree: Path) -> None:
    server = _build("build_wheel", tmp_path / "server", project=clean_tree)
    client = _build("build_wheel", tmp_path / "client", project=clean_tree / "clients" / "python")

    with zipfile.ZipFile(server) as archive:
        carried = {name: archive.read(name) for name in archive.namelist() if name.startswith("relay_client/")}
    with zipfile.ZipFile(client) as archive:
        own = {name: archive.read(name) for name in archive.namelist() if not name.startswith("relay_client-")}
    assert "relay_client/py.typed" in own
    assert carried == own  # the same files: one source, two distributions
    assert not [name for name in own if name.split("/")[0] in ("service", "delivery", "schemas")]


def test_the_cli_of_the_wheel_runs_on_the_client_library_it_carries(tmp_path: Path, clean_tree: Path) -> None:
    server = _build("build_wheel", tmp_path / "dist", project=clean_tree)
    site = tmp_path / "site"
    with zipfile.ZipFile(server) as archive:
        archive.extractall(site)
    url = f"http://127.0.0.1:{free_port()}"
    # No site (-S): no path entry or finder of this tree; the wheel's packages first, then the environment's
    # third-party ones (httpx, click, ...) behind them.
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}]; sys.path.append({sysconfig.get_paths()['purelib']!r}); "
        "import relay_client, service.cli; "
        f"assert relay_client.__file__.startswith({str(site)!r}), relay_client.__file__; "
        f"sys.argv = ['relay', 'dlq', 'list', '--url', {url!r}, '--token', 'admin-token']; service.cli.main()"
    )
    ran = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert ran.returncode == 1, ran.stderr[-2000:]
    assert ran.stderr.splitlines() == [
        f"relay: cannot reach the API at {url} (connection refused); another API: --url or RELAY_URL"
    ]
