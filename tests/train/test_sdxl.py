"""SDXL end to end on tiny-sdxl: mixed-aspect training, the time ids the UNet sees, and the LoRA in plain diffusers."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

import archdiff.train.loop as loop
from archdiff.config import load_recipe
from archdiff.model.base import resolve_base
from archdiff.train.run import run

pytestmark = pytest.mark.slow

PROMPT = "timber house in mountains"


@pytest.fixture(scope="module")
def sdxl_base() -> str:
    return resolve_base("tiny-sdxl").source


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory, nasty_folder, sdxl_base):
    """20 LoRA steps on the hostile folder's wide, square and tall images, with random crops."""
    folder, _ = nasty_folder
    output = tmp_path_factory.mktemp("sdxl") / "run"
    overrides = [
        f"output={output}",
        "base=tiny-sdxl",
        f"data.sources=[{{path: {folder}}}]",
        "data.center_crop=false",
        "train.max_steps=20",
        "train.val_every=10",
        "validation.every=null",
        "validation.seeds=[0]",
    ]
    return run(load_recipe("demo-tiny", overrides))


def test_sdxl_run_trains_on_several_buckets(sdxl_run):
    buckets = (sdxl_run.run_dir / "data.txt").read_text().split("buckets: ")[1].splitlines()[0].split(", ")
    assert len(buckets) >= 3, buckets
    assert sdxl_run.final_val_loss < sdxl_run.first_val_loss
    print(f"tiny-sdxl: {sdxl_run.steps_per_second:.1f} steps/s")


def test_unet_sees_each_samples_original_size_crop_and_bucket(tmp_path, sdxl_base, monkeypatch):
    """On the bundled facades (256 px squares, 3:2 and 2:3 at 64 px: crops of up to 5 px), with random crops."""
    batches, seen = [], []
    collate, forward = loop.collate, UNet2DConditionModel.forward

    def recording_collate(examples):
        batch = collate(examples)
        batches.append(batch)
        return batch

    def recording_forward(self, *args, added_cond_kwargs=None, **kwargs):
        seen.append(added_cond_kwargs["time_ids"].clone())
        return forward(self, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(loop, "collate", recording_collate)
    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    overrides = [f"output={tmp_path / 'run'}", "base=tiny-sdxl", "data.center_crop=false"]
    overrides += ["data.holdout=0", "validation.prompts=[]", "train.max_steps=8"]  # only training steps call the UNet
    run(load_recipe("demo-tiny", overrides))

    assert len(seen) == len(batches) == 8
    for batch, time_ids in zip(batches, seen, strict=True):
        height, width = batch["pixel_values"].shape[-2:]
        for original, crop, ids in zip(batch["original_size"], batch["crop_top_left"], time_ids, strict=True):
            assert ids.tolist() == [*original.tolist(), *crop.tolist(), height, width]
    rows = torch.cat(seen)
    assert len({tuple(row[:2].tolist()) for row in rows}) > 1, "images of several sizes"
    assert len({tuple(row[4:].tolist()) for row in rows}) > 1, "several buckets"
    assert rows[:, 2:4].any(), "random crops away from the top-left corner"


PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from diffusers import StableDiffusionXLPipeline
    base, run_dir, out = sys.argv[1:4]
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    def draw():
        generator = torch.Generator("cpu").manual_seed(0)
        image = pipe(PROMPT, num_inference_steps=25, guidance_scale=7.5, generator=generator, width=64, height=64).images[0]
        return np.asarray(image)
    before = draw()
    pipe.load_lora_weights(run_dir)
    np.savez(out, before=before, after=draw())
    assert not any(name.startswith("archdiff") for name in sys.modules)
    """
).replace("PROMPT", repr(PROMPT))


def test_lora_loads_in_plain_diffusers_and_matches_archdiff_sample(sdxl_run, sdxl_base, tmp_path):
    script, arrays = tmp_path / "plain.py", tmp_path / "plain.npz"
    script.write_text(PLAIN_DIFFUSERS)
    subprocess.run([sys.executable, str(script), sdxl_base, str(sdxl_run.run_dir), str(arrays)], check=True, cwd=tmp_path)
    plain = np.load(arrays)
    assert np.abs(plain["after"].astype(int) - plain["before"]).mean() > 1.0, "the LoRA changes the images"

    out = tmp_path / "sampled"
    cli = [sys.executable, "-m", "archdiff", "sample", PROMPT, "--lora", str(sdxl_run.run_dir), "-n", "1", "-o", str(out)]
    subprocess.run(cli, check=True, cwd=tmp_path)
    sampled = Image.open(out / "00-seed0.png")
    assert sampled.size == (64, 64) and sampled.text["base"] == "tiny-sdxl"
    assert np.array_equal(np.asarray(sampled.convert("RGB")), plain["after"]), "archdiff sample draws what diffusers draws"
