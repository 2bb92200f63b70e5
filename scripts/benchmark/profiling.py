"""py-spy on the servers while a phase runs, and the hot spots of what it recorded."""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from scripts.benchmark.stack import STOP_TIMEOUT_S, VENV, Stack, log

# Relay's own packages, as py-spy names their files; the CLI is under every sample of the API, so left out.
OUR_PACKAGES = ("delivery/", "service/", "schemas/")
ENTRY_POINT = "service/cli/commands.py"


def start_py_spy(
    pid: int, outdir: Path, name: str, *, subprocesses: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """``py-spy record --gil`` on ``pid`` (and its children with ``subprocesses``) into ``outdir/name.txt``."""
    py_spy = shutil.which("py-spy") or str(VENV / "bin" / "py-spy")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{name}.txt"
    argv = [py_spy, "record", "--pid", str(pid)]
    if subprocesses:
        argv.append("--subprocesses")
    argv += ["--format", "raw", "--rate", "200", "--gil", "--nonblocking", "-o", str(out)]
    with (outdir / f"{name}.err").open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return proc, out


def stop_py_spy(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGINT every one (py-spy writes its output then), then wait for each; kill one that does not stop."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for name, proc in procs.items():
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"  py-spy on {name} did not stop; killing it")
            proc.kill()
            proc.wait()


class Profiler:
    """py-spy on the API and worker process trees while the throughput phase runs."""

    def __init__(self, stack: Stack, outdir: Path) -> None:
        self._stack = stack
        self._outdir = outdir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, Path] = {}

    def start(self) -> None:
        for name in ("api", "worker"):
            pid = self._stack.services[name].popen.pid
            self._procs[name], self.files[name] = start_py_spy(pid, self._outdir, name, subprocesses=True)
        time.sleep(0.5)  # py-spy attaches

    def stop(self) -> None:
        stop_py_spy(self._procs)


def hot_spots(path: Path, top: int) -> dict[str, Any]:
    """Shares of GIL-holding samples from a py-spy raw (collapsed) file.

    ``own``: functions by their own time; ``packages``: own time by top-level package (``redis``,
    ``asyncio``, ``delivery`` ...); ``ours``: Relay's functions including everything they call. No samples when
    py-spy wrote no file (it could not attach).
    """
    if not path.exists():
        return {"samples": 0, "own": [], "packages": [], "ours": []}
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_parse_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        samples += count
        func, module = frames[-1]
        own[f"{module}:{func}"] += count
        packages[module.split("/")[0].removesuffix(".py")] += count
        for name in {f"{m}:{f}" for f, m in frames if m.startswith(OUR_PACKAGES) and m != ENTRY_POINT}:
            ours[name] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / samples, 1)) for name, c in counter.most_common(top)]

    return {"samples": samples, "own": shares(own), "packages": shares(packages), "ours": shares(ours)}


def _parse_frame(frame: str) -> tuple[str, str]:
    """``func (pkg/module.py:123)`` -> (``func``, ``pkg/module.py``)."""
    func, _, where = frame.partition(" (")
    return func, where.rstrip(")").rsplit(":", 1)[0]
