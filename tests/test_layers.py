"""The layers of the house (``[tool.importlinter]`` in pyproject.toml): each package imports only what is below it,
only the commands use the client library, and the client library imports nothing of the server."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_no_package_imports_one_above_it() -> None:
    # Run apart, from the project's root: import-linter reads the packages as they are on disk there.
    checked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "3 kept, 0 broken" in checked.stdout  # the layers, and the client library beside them
