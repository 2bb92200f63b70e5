"""How Relay installs: what ``scripts/setup`` builds (an editable install of this tree)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import ROOT


def test_the_editable_install_builds_without_a_warning(tmp_path: Path) -> None:
    # The build backend scripts/setup runs (pip install -e .), with every warning an error: a fresh setup prints
    # nothing but real errors.
    built = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            f"import setuptools.build_meta as b; b.build_editable({str(tmp_path)!r})",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (pth,) = [name for name in archive.namelist() if name.endswith(".pth")]
        assert Path(archive.read(pth).decode().strip()) == ROOT  # the tree itself is imported, as it is edited
