"""Shared test set-up: one torch thread, no Hub, a private cache, and one tiny model per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before torch is imported anywhere: one thread is much faster on small CPU machines, and results
# are only bit-identical at a fixed thread count.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# A private cache, removed when the session's interpreter exits. pytest-xdist workers inherit the environment of
# the process that started them: each makes its own cache rather than build the tiny models into a shared one.
if os.environ.get("ARCHDIFF_CACHE", "") in ("", os.environ.get("ARCHDIFF_TEST_OWN_CACHE")):
    _SESSION_CACHE = tempfile.TemporaryDirectory(prefix="archdiff-test-cache-")
    os.environ["ARCHDIFF_CACHE"] = os.environ["ARCHDIFF_TEST_OWN_CACHE"] = _SESSION_CACHE.name
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_base() -> str:
    """The tiny SD-1.5 pipeline folder, built once per session through the same path `--base tiny-sd15` takes."""
    from archdiff.model.base import resolve_base

    return resolve_base("tiny-sd15").source


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_base):
    """The demo recipe trained for its full 300 steps, once per session (all workers): the integration tests read this run."""
    from session_runs import once

    from archdiff.config import load_recipe
    from archdiff.train.run import run

    def train(output: Path):
        return run(load_recipe("demo-tiny", [f"output={output}", "validation.seeds=[0, 1]"]))

    return once(tmp_path_factory, "demo", train)


@pytest.fixture(scope="session")
def nasty_folder(tmp_path_factory):
    """A hostile image folder (odd modes, EXIF rotation, broken files); see tests/nasty_images.py."""
    from nasty_images import make_nasty_folder

    root = tmp_path_factory.mktemp("nasty")
    return root, make_nasty_folder(root)


@pytest.fixture(scope="session")
def small_lora_runs(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """12-step runs on tiny-sd15 and tiny-sdxl with alpha != rank and a text-encoder LoRA: what exporters and samplers read.
    Once per session (all workers)."""
    from session_runs import once

    from archdiff.config import load_recipe
    from archdiff.train.run import run

    def train(folder: Path) -> dict[str, Path]:
        runs = {}
        for base in ("tiny-sd15", "tiny-sdxl"):
            overrides = [
                f"base={base}",
                f"output={folder / base}",
                "train.max_steps=12",
                "train.checkpoint_every=null",
                "lora.alpha=4",
                "lora.text_encoder={rank: 4, alpha: 2}",
                "validation.prompts=[]",
            ]
            runs[base] = run(load_recipe("demo-tiny", overrides)).run_dir
        return runs

    return once(tmp_path_factory, "small-lora-runs", train)
