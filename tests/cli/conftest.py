"""Fixtures of the command-line tests: one archdiff cache per session, with tiny-sd15 built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import TRAIN_DEMO, run_archdiff


@pytest.fixture(scope="session")
def archdiff_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: tiny-sd15 is built (~5 s) once here, not inside whichever test runs first."""
    cache = tmp_path_factory.mktemp("archdiff-cache")
    work = tmp_path_factory.mktemp("warm-up")
    (work / "empty").mkdir()
    run_archdiff(work, cache, *TRAIN_DEMO, "--base", "tiny-sd15", "--data", "empty")
    return cache


@pytest.fixture
def archdiff(tmp_path: Path, archdiff_cache: Path):
    """`archdiff(*args)` runs the CLI in this test's tmp_path with the shared cache."""
    return lambda *args, **kwargs: run_archdiff(tmp_path, archdiff_cache, *args, **kwargs)
