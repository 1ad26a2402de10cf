"""A checkpoint's LoRA as a run-like folder: the final checkpoint gives back the run's own LoRA, tensor for tensor, and
plain diffusers loads it; `find_steps` picks checkpoints by all / latest / step lists and names what is there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from archdiff.checkpoint_loras import CHECKPOINT_LORAS_DIR, checkpoint_lora, find_steps
from archdiff.errors import UserError
from archdiff.run_files import CHECKPOINT_STATE, EVAL_DIR, LORA_WEIGHTS, RECIPE_FILE


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base) -> Path:
    """Three steps with a checkpoint at each; alpha != rank and a text-encoder LoRA, so the adapter config must travel."""
    from archdiff.config import load_recipe
    from archdiff.train.run import run

    overrides = [
        f"output={tmp_path_factory.mktemp('ckpt-loras') / 'run'}",
        "train.max_steps=3",
        "train.checkpoint_every=1",
        "train.warmup_steps=0",
        "validation.prompts=[]",
        "lora.alpha=4",
        "lora.text_encoder={rank: 4, alpha: 2}",
    ]
    return run(load_recipe("demo-tiny", overrides)).run_dir


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def _draw(pipe) -> object:
    """Two denoising steps at 64 px with a fixed seed: enough to tell LoRAs apart, bit-identical for the same weights."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return pipe("brick facade", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images[0]


def test_the_last_checkpoint_holds_exactly_the_runs_final_lora(run_dir):
    import torch
    from safetensors import safe_open

    folder = checkpoint_lora(run_dir / "checkpoints" / "step-000003", "sd15")
    assert folder == run_dir / EVAL_DIR / CHECKPOINT_LORAS_DIR / "step-000003"
    assert sorted(p.name for p in folder.iterdir()) == sorted([LORA_WEIGHTS, RECIPE_FILE])
    got, final = _tensors(folder / LORA_WEIGHTS), _tensors(run_dir / LORA_WEIGHTS)
    assert sorted(got) == sorted(final)
    assert any(key.startswith("text_encoder.") for key in got) and any(key.startswith("unet.") for key in got)
    assert all(torch.equal(got[key], final[key]) for key in final)
    with safe_open(folder / LORA_WEIGHTS, "pt") as ours, safe_open(run_dir / LORA_WEIGHTS, "pt") as theirs:
        # the adapter configs (alpha 4 with rank 4 in the UNet; alpha 2 in the text encoder) travel with the tensors
        assert ours.metadata() == theirs.metadata()
    assert "alpha: 4" in (folder / RECIPE_FILE).read_text(encoding="utf-8")


def test_an_earlier_checkpoint_differs_and_plain_diffusers_loads_both(run_dir, tiny_base):
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    last = checkpoint_lora(run_dir / "checkpoints" / "step-000003", "sd15")
    first = checkpoint_lora(run_dir / "checkpoints" / "step-000001", "sd15")
    early, final = _tensors(first / LORA_WEIGHTS), _tensors(last / LORA_WEIGHTS)
    assert sorted(early) == sorted(final)
    assert not all(torch.equal(early[key], final[key]) for key in final)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    base = _draw(pipe)
    images = {}
    for name, folder in (("run", run_dir), ("last", last), ("first", first)):
        pipe.load_lora_weights(str(folder))
        images[name] = _draw(pipe)
        pipe.unload_lora_weights()
    assert np.array_equal(images["last"], images["run"])  # same tensors and the same scale (alpha / rank)
    assert not np.array_equal(images["first"], images["last"])
    assert not np.array_equal(images["last"], base)


def test_a_built_folder_is_reused_and_rebuilt_when_the_checkpoint_is_newer(run_dir):
    checkpoint = run_dir / "checkpoints" / "step-000002"
    weights = checkpoint_lora(checkpoint, "sd15") / LORA_WEIGHTS
    built = weights.stat().st_mtime_ns
    assert checkpoint_lora(checkpoint, "sd15") / LORA_WEIGHTS == weights
    assert weights.stat().st_mtime_ns == built
    state = checkpoint / CHECKPOINT_STATE
    later = built + 10_000_000_000
    os.utime(state, ns=(later, later))  # the checkpoint was written again (e.g. a resumed run re-saved it)
    rebuilt = checkpoint_lora(checkpoint, "sd15") / LORA_WEIGHTS
    assert rebuilt.stat().st_mtime_ns > built
    assert not list(rebuilt.parent.parent.glob(".*"))  # no staging folder left behind


def test_a_damaged_checkpoint_state_is_one_line(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    state = copy / "checkpoints" / "step-000001" / CHECKPOINT_STATE
    state.write_text('{"step": 1, "recipe": {"base"', encoding="utf-8")
    with pytest.raises(UserError, match="trainer_state.json cannot be read as a checkpoint"):
        checkpoint_lora(state.parent, "sd15")
    assert not (copy / EVAL_DIR / CHECKPOINT_LORAS_DIR / "step-000001").exists()


def test_find_steps_all_latest_and_lists(run_dir):
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(find_steps(run_dir, "all")) == ["step-000001", "step-000002", "step-000003"]
    assert names(find_steps(run_dir, " latest ")) == ["step-000003"]
    assert names(find_steps(run_dir, "2,step-000003")) == ["step-000002", "step-000003"]
    assert names(find_steps(run_dir, "3, 1 ,3")) == ["step-000001", "step-000003"]  # oldest first, once each


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("999", r"has no checkpoint at step 999 \(it has steps 1, 2, 3\)"),
        ("2,7", r"no checkpoint at step 7 \(it has steps 1, 2, 3\)"),
        ("x", r"--checkpoints takes all, latest or steps like 100,200 or step-000200 \(got 'x'\)"),
        ("-1", r"got '-1'"),
        ("", r"got ''"),
        ("best", r"got 'best'"),
    ],
)
def test_find_steps_errors_name_the_steps_there_are(run_dir, spec, message):
    with pytest.raises(UserError, match=message):
        find_steps(run_dir, spec)


def test_incomplete_checkpoints_are_not_offered(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    (copy / "checkpoints" / "step-000003" / CHECKPOINT_STATE).unlink()  # a save cut short: no state written last
    assert [p.name for p in find_steps(copy, "all")] == ["step-000001", "step-000002"]
    assert [p.name for p in find_steps(copy, "latest")] == ["step-000002"]
    with pytest.raises(UserError, match=r"no checkpoint at step 3 \(it has steps 1, 2\)"):
        find_steps(copy, "3")
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(UserError, match=r"has no complete checkpoint \(train it first"):
        find_steps(copy, "all")
