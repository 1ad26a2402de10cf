"""Fixtures of the command-line tests: one archdiff cache per session, and each finished run they need trained once.

A `archdiff train` subprocess spends ~15 s of CPU importing torch and diffusers before it trains a step, so every
run the test modules share is trained here once per session, by one xdist worker for all (tests/session_runs.py);
a test that damages a run works on its own copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hostile import FINISHED_SD15, TRAIN_DEMO, run_archdiff
from session_runs import once


@pytest.fixture(scope="session")
def archdiff_cache(tmp_path_factory: pytest.TempPathFactory, tiny_base: str) -> Path:
    """The CLI tests' own cache, holding the session's tiny-sd15 (built once by tests/conftest.py) at the same place."""
    cache = tmp_path_factory.mktemp("archdiff-cache")
    shutil.copytree(tiny_base, cache / Path(tiny_base).relative_to(os.environ["ARCHDIFF_CACHE"]))
    return cache


def _train(tmp_path_factory: pytest.TempPathFactory, cache: Path, name: str, *args: str) -> Path:
    """`archdiff train ARGS` into a run folder built once per session, whichever xdist worker asks first."""

    def train(output: Path) -> Path:
        output.parent.mkdir(parents=True, exist_ok=True)
        result = run_archdiff(output.parent, cache, *args, "-o", str(output), timeout=600)
        assert result.returncode == 0, result.stderr
        return output

    return once(tmp_path_factory, name, train)


@pytest.fixture(scope="session")
def finished_sd15(tmp_path_factory: pytest.TempPathFactory, archdiff_cache: Path) -> Path:
    """A finished tiny-sd15 run of FINISHED_SD15 (a checkpoint at every step). Shared: copy it before changing it."""
    return _train(tmp_path_factory, archdiff_cache, "finished-sd15", *FINISHED_SD15)


@pytest.fixture(scope="session")
def finished_sdxl(tmp_path_factory: pytest.TempPathFactory, archdiff_cache: Path) -> Path:
    """A finished two-step tiny-sdxl run. Shared: copy it before changing it."""
    args = [*TRAIN_DEMO, "--max-steps", "2", "--set", "validation.prompts=[]", "--base", "tiny-sdxl"]
    return _train(tmp_path_factory, archdiff_cache, "finished-sdxl", *args)


@pytest.fixture
def archdiff(tmp_path: Path, archdiff_cache: Path):
    """`archdiff(*args)` runs the CLI in this test's tmp_path with the shared cache."""
    return lambda *args, **kwargs: run_archdiff(tmp_path, archdiff_cache, *args, **kwargs)
