"""What the team does with an SD 3.5 run after training: push it (card, files) and serve it (LoRA on/off, img2img).

One short tiny-sd3 run (rectified flow, a large learning rate so the LoRA visibly moves the images) is read by both.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_server import FakeHub
from huggingface_hub import ModelCard
from PIL import Image

from archdiff.run_files import LORA_WEIGHTS

pytestmark = pytest.mark.slow

TOKEN = "hf_sd35_test_token_not_real"
REPO = "jane/sd35-facade"


@pytest.fixture(scope="module")
def sd3_run(tmp_path_factory) -> Path:
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    overrides = [
        f"output={tmp_path_factory.mktemp('sd3-outputs') / 'run'}",
        "base=tiny-sd3",
        "train.snr_gamma=null",
        "train.max_steps=6",
        "train.warmup_steps=0",
        "train.learning_rate=1e-2",
        "train.checkpoint_every=null",
        "validation.seeds=[0]",
        "validation.steps=2",
    ]
    return run(load_recipe("demo-tiny", overrides)).run_dir


def test_push_of_an_sd35_run_names_its_pipeline_and_uploads_the_lora(sd3_run: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE")) and k != "XDG_CACHE_HOME"}
    env |= {"HOME": str(home), "OMP_NUM_THREADS": "1", "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"}
    with FakeHub.running() as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        command = [sys.executable, "-m", "archdiff", "push", str(sd3_run), "--repo", REPO]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        files = hub.committed_files()
    assert files[LORA_WEIGHTS] == (sd3_run / LORA_WEIGHTS).read_bytes()
    assert {"README.md", "recipe.yaml", "samples/step-000006.png", "samples/prompt00/00-seed0.png"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert "stable-diffusion-3" in card.data.tags and "stable-diffusion" not in card.data.tags
    assert "from diffusers import StableDiffusion3Pipeline" in card.text
    assert "A LoRA adapter for Stable Diffusion 3.5" in card.text
    assert "| Transformer targets |" in card.text and "UNet" not in card.text
    assert "kohya" not in card.text.lower(), "SD 3.5 LoRAs have no kohya file to point at"


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (payload,) = response.json()["images"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"), dtype=np.int16)


def test_serve_draws_an_sd35_run_with_and_without_its_lora_and_from_an_image(sd3_run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from archdiff.serve.app import create_app
    from archdiff.serve.engine import Engine
    from archdiff.serve.feedback import FeedbackStore
    from archdiff.serve.settings import Limits, ServeConfig

    engine = Engine(None, [str(sd3_run)], [], Limits())
    store = FeedbackStore(tmp_path / "serve")
    app = create_app(engine, store, ServeConfig(folder=tmp_path / "serve"))
    with TestClient(app, raise_server_exceptions=False) as client:
        (listed,) = client.get("/v1/loras").json()["loras"]
        assert (listed["name"], listed["base"], listed["resolution"]) == ("run", "tiny-sd3", 64)
        body = {"prompt": "brick facade", "steps": 3, "guidance": 4.5, "width": 64, "height": 64, "seed": 3}
        plain = _pixels(client.post("/v1/generate", json=body))
        with_lora = _pixels(client.post("/v1/generate", json=body | {"loras": [{"name": "run", "scale": 1.0}]}))
        plain_again = _pixels(client.post("/v1/generate", json=body))
        assert np.array_equal(plain, plain_again), "the LoRA is switched off again after a request that used it"
        assert np.abs(with_lora - plain).mean() > 0.5, "the SD 3.5 LoRA changes the image"

        drawn = {}
        for colour in ((200, 120, 60), (30, 60, 220)):
            upload = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(upload, "PNG")
            image_body = body | {"init_image": base64.b64encode(upload.getvalue()).decode(), "strength": 0.5}
            drawn[colour] = _pixels(client.post("/v1/generate", json=image_body))
        orange, blue = drawn.values()
        assert np.abs(orange - blue).mean() > 0.5 and np.abs(orange - plain).mean() > 0.5, "img2img follows the upload"
    store.close()
