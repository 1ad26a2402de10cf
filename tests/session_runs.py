"""Finished tiny runs that several test modules read, built once per test session even under pytest-xdist.

With `make test`'s workers, a session fixture is built by every worker that needs it: the 300-step demo run was
trained twice. `once` lets the first worker that asks build it into the session's shared temp folder, under a file
lock; the others wait for it and read its result. The runs are shared: a test that changes one copies it first.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this test session that all its xdist workers see: each worker's basetemp (BASETEMP/popen-gwN)
    lies inside it. Anything else, a plain session or one merely started from a worker, keeps to its own basetemp."""
    base = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = (base.parent if worker and base.name.endswith(worker) else base) / "shared-runs"
    root.mkdir(exist_ok=True)
    return root


def once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """`build(folder)`'s result, computed by the first worker that asks (folder = shared/name) and pickled for the rest."""
    from filelock import FileLock

    root = shared_folder(tmp_path_factory)
    result = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():
            value = build(root / name)
            result.write_bytes(pickle.dumps(value))
            return value
    return pickle.loads(result.read_bytes())
