"""The wheel, not the checkout: built like a release, installed into a fresh venv, run from an empty folder.

Catches what an editable install hides: recipes/ and datasets/ missing from the wheel, or code that finds
files next to the source tree. The venv borrows this interpreter's installed libraries through a .pth line
(no download); that adds a folder to sys.path but runs none of its .pth files, so the checkout's editable
install stays out of it, and the test checks that the archdiff it runs is the wheel's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A venv holding only the wheel (sdist first, then the wheel from it), and the environment to run it in."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", REPO], REPO, env)
    (wheel,) = (root / "dist").glob("archdiff-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).strip())
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "borrowed-libraries.pth").write_text("".join(f"{path}\n" for path in borrowed))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], root, env)
    return venv, env


@pytest.mark.slow
def test_wheel_carries_recipes_and_data_and_trains_from_an_empty_folder(wheel_venv, tmp_path):
    venv, env = wheel_venv
    work = tmp_path / "elsewhere"
    work.mkdir()

    imported = run([venv / "bin" / "python", "-c", "import archdiff; print(archdiff.__file__)"], work, env)
    assert Path(imported.strip()).is_relative_to(venv), f"the checkout's archdiff ran, not the wheel's: {imported}"

    archdiff = venv / "bin" / "archdiff"
    recipes = run([archdiff, "recipes", "list"], work, env)
    assert {"demo-tiny", "facade-lora", "plan-lora", "sdxl-facade-lora"} <= {line.split()[0] for line in recipes.splitlines()}

    data = run([archdiff, "data", "list"], work, env)
    bundled = {line.split()[0]: line.split()[1] for line in data.splitlines() if line.strip().startswith(("facades ", "plans "))}
    assert bundled == {"facades": "32", "plans": "32"}, data
    assert "cmp-facades" in data, "the Hub manifests (datasets/manifests) are missing"

    trained = run([archdiff, "train", "--recipe", "demo-tiny", "--max-steps", "5", "-o", tmp_path / "run"], work, env)
    assert "done: 5 steps" in trained
    lora = tmp_path / "run" / "pytorch_lora_weights.safetensors"
    assert lora.stat().st_size > 0
    assert sorted(p.name for p in work.iterdir()) == [], "a run with -o elsewhere left files in the working folder"
