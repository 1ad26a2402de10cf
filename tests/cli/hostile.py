"""The contract every command-line test checks, and the way it runs archdiff: the real entry point in a
subprocess, offline, with its own cache. Bad input gets one `archdiff: error:` line, exit code 2, no traceback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

TRAIN_DEMO = ["train", "--recipe", "demo-tiny"]
# The shared finished SD 1.5 run (tests/cli/conftest.py's `finished_sd15`): three steps, a checkpoint and a metrics
# line at each; resuming it takes these same arguments.
FINISHED_STEPS = 3
FINISHED_SD15 = [
    *TRAIN_DEMO,
    "--max-steps",
    str(FINISHED_STEPS),
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "validation.prompts=[]",
    "--set",
    "train.log_every=1",
]


def run_archdiff(
    cwd: Path, cache: Path, *args: str, timeout: float = 180, hidden: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The console entry point in a fresh interpreter, offline, with its own cache; `hidden` packages look
    uninstalled to it (a sitecustomize marks them missing in sys.modules), whatever this venv holds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ARCHDIFF_CACHE": str(cache)}
    if hidden:
        site = cwd / "hide-packages"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in hidden))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "archdiff", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def user_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the contract for bad input and return the one error line for case-specific checks."""
    shown = f"rc={result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == 2, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("archdiff: error:"), shown
    return lines[0]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of `path` itself) by relative name: what must stay intact."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    root = path.parent if path.is_file() else path
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
