"""Fixtures of the serve tests: two tiny LoRA runs and a tiny ControlNet run trained once, and the Engines built once.

Every run is a few steps on tiny-sd15 at 64 px (no warm-up, a large learning rate, so the LoRAs visibly move the
images); the Engines are real (diffusers pipelines), so the API tests draw real pixels in a few denoising steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # tests/cli/hostile.py: how the CLI is run

from archdiff.serve.settings import Limits, ServeConfig  # noqa: E402

QUIET = ["validation.prompts=[]", "train.checkpoint_every=null", "train.warmup_steps=0"]


def _train(output: Path, recipe: str, *overrides: str) -> Path:
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    return run(load_recipe(recipe, [f"output={output}", *QUIET, *overrides])).run_dir


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """Two 3-step demo-tiny runs that differ in seed and learning rate: 'facade' and 'timber'."""
    root = tmp_path_factory.mktemp("serve-runs")
    return {
        "facade": _train(root / "facade", "demo-tiny", "train.max_steps=3", "train.learning_rate=1e-2", "train.seed=1"),
        "timber": _train(root / "timber", "demo-tiny", "train.max_steps=3", "train.learning_rate=5e-3", "train.seed=2"),
    }


@pytest.fixture(scope="session")
def controlnet_run(tmp_path_factory, tiny_base) -> Path:
    """A 2-step demo-controlnet run ('sketch', drawing controls)."""
    return _train(tmp_path_factory.mktemp("serve-controlnet") / "sketch", "demo-controlnet", "train.max_steps=2")


@pytest.fixture(scope="session")
def engine(lora_runs, controlnet_run):
    """One Engine serving both LoRAs and the ControlNet, like `serve --lora facade --lora timber --controlnet sketch`."""
    from archdiff.serve.engine import Engine

    return Engine(None, [str(path) for path in lora_runs.values()], [str(controlnet_run)], Limits())


@pytest.fixture(scope="session")
def bare_engine(tiny_base):
    """The base alone (`serve --base tiny-sd15`): no LoRA, no ControlNet."""
    from archdiff.serve.engine import Engine

    return Engine("tiny-sd15", [], [], Limits())


def make_client(engine, folder: Path, **config):
    """A TestClient over create_app with a real feedback store in `folder`; the caller closes it (a context manager)."""
    from fastapi.testclient import TestClient

    from archdiff.serve.app import create_app
    from archdiff.serve.feedback import FeedbackStore

    store = FeedbackStore(folder)
    client = TestClient(create_app(engine, store, ServeConfig(folder=folder, **config)), raise_server_exceptions=False)
    client.store = store
    return client


@pytest.fixture
def client(engine, tmp_path):
    with make_client(engine, tmp_path / "serve") as test_client:
        yield test_client
    test_client.store.close()
