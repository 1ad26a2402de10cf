"""End to end on the tiny model: the run folder's exact contents, the loss going down, and the LoRA
loading in plain diffusers (no archdiff import) with the same images `archdiff sample` draws."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors import safe_open

from archdiff.run_files import MetricsLog

pytestmark = pytest.mark.slow

PROMPT = "timber house in mountains"


def test_run_folder_holds_exactly_the_promised_files(demo_run):
    run_dir = demo_run.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "data.txt",
        "demo-tiny.safetensors",
        "logs",
        "metrics.jsonl",
        "pytorch_lora_weights.safetensors",
        "recipe.yaml",
        "samples",
    ]
    assert sorted(str(p.relative_to(run_dir)) for p in (run_dir / "samples").rglob("*")) == [
        "samples/prompt00",
        "samples/prompt00/00-seed0.png",
        "samples/prompt00/01-seed1.png",
        "samples/prompt00/grid.png",
        "samples/step-000100.png",
        "samples/step-000200.png",
        "samples/step-000300.png",
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000100", "step-000200", "step-000300"]


def test_progress_grids_and_tensorboard_events(demo_run):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = Image.open(demo_run.run_dir / "samples" / "step-000100.png")
    assert grid.size == (2 * 64, 64), "one row per prompt, one column per seed"
    events = EventAccumulator(str(next((demo_run.run_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "lr", "val_loss"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Images("samples")] == [100, 200, 300]
    assert events.Scalars("val_loss")[-1].step == 300


def test_saved_recipe_is_fully_resolved(demo_run):
    saved = yaml.safe_load((demo_run.run_dir / "recipe.yaml").read_text())
    assert saved["base"] == "tiny-sd15"
    assert saved["output"] == str(demo_run.run_dir)
    assert "extends" not in saved
    assert saved["train"]["max_steps"] == 300 and saved["lora"]["rank"] == 16


def test_lora_file_is_diffusers_format_with_adapter_metadata(demo_run):
    with safe_open(demo_run.lora_file, "pt") as weights:
        keys = list(weights.keys())
        metadata = json.loads(weights.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert any(".attn1.to_q." in k for k in keys) and any(".conv1." in k for k in keys)
    assert metadata["unet.r"] == 16 and metadata["unet.lora_alpha"] == 16


def test_metrics_log_every_step_with_loss_lr_and_val_loss(demo_run):
    rows = MetricsLog.read(demo_run.run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == [0, *range(10, 301, 10)]
    assert all({"step", "loss", "lr", "val_loss", "elapsed"} == set(r) for r in rows[1:-1])
    assert set(rows[0]) - set(rows[1]) == {"startup"} and rows[0]["startup"] > 0, "seconds from process start to the first step"
    assert set(rows[-1]) - set(rows[1]) == {"peak_memory_mb"} and rows[-1]["peak_memory_mb"] > 100, "peak RSS on CPU"
    assert [r["elapsed"] for r in rows] == sorted(r["elapsed"] for r in rows), "seconds since training started"
    assert all(isinstance(r["loss"], float) and r["lr"] >= 0 for r in rows[1:])
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [0, 50, 100, 150, 200, 250, 300]


def test_training_lowers_held_out_loss_to_at_most_six_tenths(demo_run):
    ratio = demo_run.final_val_loss / demo_run.first_val_loss
    print(f"held-out loss {demo_run.first_val_loss:.4f} -> {demo_run.final_val_loss:.4f} (ratio {ratio:.3f})")
    assert ratio <= 0.6


PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from diffusers import StableDiffusionPipeline
    base, run_dir, out = sys.argv[1:4]
    pipe = StableDiffusionPipeline.from_pretrained(base)
    def draw():
        generator = torch.Generator("cpu").manual_seed(0)
        return np.asarray(pipe(PROMPT, num_inference_steps=25, generator=generator, width=64, height=64).images[0])
    before = draw()
    pipe.load_lora_weights(run_dir)
    np.savez(out, before=before, after=draw())
    assert not any(name.startswith("archdiff") for name in sys.modules)
    """
).replace("PROMPT", repr(PROMPT))


def test_lora_loads_in_plain_diffusers_and_matches_archdiff_sample(demo_run, tiny_base, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_DIFFUSERS)
    arrays = tmp_path / "plain.npz"
    subprocess.run([sys.executable, str(script), tiny_base, str(demo_run.run_dir), str(arrays)], check=True, cwd=tmp_path)
    plain = np.load(arrays)
    assert np.abs(plain["after"].astype(int) - plain["before"]).mean() > 1.0, "the LoRA changes the images"

    out = tmp_path / "sampled"
    cli = [sys.executable, "-m", "archdiff", "sample", PROMPT, "--lora", str(demo_run.run_dir), "-n", "1", "-o", str(out)]
    subprocess.run(cli, check=True, cwd=tmp_path)
    sampled = Image.open(out / "00-seed0.png")
    assert np.array_equal(np.asarray(sampled.convert("RGB")), plain["after"])
    assert sampled.text["prompt"] == PROMPT and sampled.text["seed"] == "0" and sampled.text["base"] == "tiny-sd15"
    assert json.loads(sampled.text["lora"]) == [f"{demo_run.run_dir}:1"]
    validation = Image.open(demo_run.run_dir / "samples" / "prompt00" / "00-seed0.png")
    assert json.loads(validation.text["lora"]) == ["demo:1"], "pushed images name the run, not its folder on this machine"
    assert (out / "grid.png").is_file()
