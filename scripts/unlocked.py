"""Print the requirements of pyproject.toml, dev extras included, that the installed packages do not meet.

scripts/setup runs it after installing requirements.lock: ``pip check`` alone would not look at the extras.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def unmet() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [*project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]
    problems = []
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            problems.append(f"{line}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line}: {installed} is installed")
    return problems


if __name__ == "__main__":
    problems = unmet()
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
