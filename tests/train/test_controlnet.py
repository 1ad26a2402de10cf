"""ControlNet runs on the tiny bases: the control is learnt and used, plain diffusers loads the result, resume is exact."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.run_files import MetricsLog
from archdiff.train.run import run

pytestmark = pytest.mark.slow

CONTROLNET_WEIGHTS = "controlnet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def controlnet_run(tmp_path_factory, tiny_base):
    """demo-controlnet (bundled facade-sketches pairs, drawing controls) for 120 steps, with a one-prompt grid."""
    output = tmp_path_factory.mktemp("controlnet") / "run"
    recipe = load_recipe(
        "demo-controlnet",
        [
            f"output={output}",
            "train.max_steps=120",
            "validation.every=null",
            "validation.prompts=[a facade]",
            "validation.steps=4",
        ],
    )
    return run(recipe)


def held_out_losses(run_dir):
    """Held-out loss of the saved ControlNet (loaded by diffusers) with the real controls and with blank ones."""
    from diffusers import ControlNetModel

    from archdiff.data.catalog import build_catalog, split_holdout
    from archdiff.data.samples import SampleSet, expand_samples
    from archdiff.model.base import load_components, resolve_base
    from archdiff.train.evaluation import build_eval_set, evaluate
    from archdiff.train.step import denoiser_for

    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    components = load_components(resolve_base(recipe.base))
    components.place("cpu", torch.float32)
    catalog = build_catalog(recipe.data, controls=True)
    _, holdout = split_holdout(catalog.records, recipe.data.holdout, None, recipe.train.seed)
    samples = expand_samples(holdout, recipe.data, train=False)
    holdout_set = SampleSet(catalog, samples, recipe.data, components.tokenizer, recipe.train.seed, train=False, controls=True)
    eval_set = build_eval_set(holdout_set, recipe, components, "cpu")
    controlnet = ControlNetModel.from_pretrained(run_dir / "controlnet")
    denoiser = denoiser_for(recipe, components, components.unet, list(components.text_encoders), "cpu", controlnet)
    blank = [
        replace(group, batch={**group.batch, "control_values": torch.zeros_like(group.batch["control_values"])})
        for group in eval_set
    ]
    return evaluate(denoiser, eval_set, batch_size=8), evaluate(denoiser, blank, batch_size=8)


def test_the_controlnet_learns_the_pairs_and_logs_what_its_control_is_worth(controlnet_run):
    assert controlnet_run.final_val_loss < 0.7 * controlnet_run.first_val_loss
    rows = [row for row in MetricsLog.read(controlnet_run.run_dir / "metrics.jsonl") if row["val_loss"] is not None]
    assert [row["step"] for row in rows] == [0, 50, 100, 120]
    start, end = rows[0], rows[-1]
    assert start["val_loss_blank_control"] == start["val_loss"], "an untrained ControlNet adds zeros, whatever its control"
    real, blank = held_out_losses(controlnet_run.run_dir)  # recomputed from the saved ControlNet, loaded by diffusers
    assert real == pytest.approx(end["val_loss"], rel=1e-4) and blank == pytest.approx(end["val_loss_blank_control"], rel=1e-4)
    assert controlnet_run.final_blank_control_loss == end["val_loss_blank_control"]


def test_training_opens_the_control_path(controlnet_run, tiny_base):
    """From zero (the zero convolutions) to a ControlNet whose residuals depend on the control image."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    untrained = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"))
    trained = ControlNetModel.from_pretrained(controlnet_run.run_dir / "controlnet")
    generator = torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    lines = (torch.rand(2, 3, 64, 64, generator=generator) > 0.85).float()

    def residual_change(controlnet):
        with torch.no_grad():
            outputs = [
                controlnet(latents, torch.tensor([300, 700]), text, controlnet_cond=c, return_dict=False)
                for c in (lines, 0 * lines)
            ]
        (down, middle), (blank_down, blank_middle) = outputs
        return max((a - b).abs().max().item() for a, b in zip([*down, middle], [*blank_down, blank_middle], strict=True))

    assert residual_change(untrained) == 0.0
    assert residual_change(trained) > 1e-3


def test_the_run_folder_holds_a_diffusers_controlnet_and_a_control_result_grid(controlnet_run):
    from PIL import Image

    run_dir = controlnet_run.run_dir
    assert controlnet_run.lora_file == run_dir / "controlnet"
    assert (run_dir / CONTROLNET_WEIGHTS).is_file() and not (run_dir / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((run_dir / "controlnet" / "config.json").read_text())["_class_name"] == "ControlNetModel"
    grid = Image.open(run_dir / "samples" / "step-000120.png")
    assert grid.size == (64 * 4, 64)  # the control, then one image per seed (0, 1, 2)
    control = grid.crop((0, 0, 64, 64)).convert("L")
    assert set(control.getdata()) <= {0, 255} and 0 < sum(v == 255 for v in control.getdata()) < 64 * 32  # white lines on black
    chunks = Image.open(run_dir / "samples" / "prompt00" / "00-seed0.png").text
    assert json.loads(chunks["control_type"]) == ["drawing"] and 0.0 <= json.loads(chunks["control_f1"])[0] <= 1.0  # adherence


PLAIN_DIFFUSERS = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from PIL import Image, ImageDraw
    from diffusers import ControlNetModel, {pipeline}
    base, controlnet_dir = sys.argv[1], sys.argv[2]
    controlnet = ControlNetModel.from_pretrained(controlnet_dir)
    pipe = {pipeline}.from_pretrained(base, controlnet=controlnet, {extra})
    pipe.set_progress_bar_config(disable=True)
    images = []
    for box in [(8, 8, 30, 56), (8, 8, 30, 56), (34, 20, 60, 40)]:
        control = Image.new("RGB", (64, 64))
        ImageDraw.Draw(control).rectangle(box, outline="white", width=2)
        out = pipe("a facade", image=control, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
        images.append(out.images[0])
    assert "archdiff" not in sys.modules
    print(float(np.abs(images[0] - images[1]).max()), float(np.abs(images[0] - images[2]).mean()))
    """
)


def plain_diffusers_difference(base, controlnet_dir, sdxl=False):
    """Mean pixel difference (0-1 scale) between two images plain diffusers draws from two different controls (same seed);
    the same control twice must give the same image, so any difference is the control's doing."""
    pipeline = "StableDiffusionXLControlNetPipeline" if sdxl else "StableDiffusionControlNetPipeline"
    extra = "add_watermarker=False" if sdxl else "safety_checker=None, requires_safety_checker=False"
    script = PLAIN_DIFFUSERS.format(pipeline=pipeline, extra=extra)
    done = subprocess.run([sys.executable, "-c", script, base, str(controlnet_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    same, different = map(float, done.stdout.split()[-2:])
    assert same == 0.0
    return different


def test_plain_diffusers_loads_the_controlnet_and_the_control_steers_the_image(controlnet_run, tiny_base):
    assert plain_diffusers_difference(tiny_base, controlnet_run.run_dir / "controlnet") > 1e-5


def test_an_sdxl_controlnet_trains_and_plain_diffusers_loads_it(tmp_path):
    from archdiff.model.base import resolve_base

    output = tmp_path / "sdxl"
    overrides = [f"output={output}", "base=tiny-sdxl", "train.max_steps=20", "train.val_every=20", "validation.prompts=[]"]
    result = run(load_recipe("demo-controlnet", overrides))
    assert result.final_val_loss < result.first_val_loss
    assert plain_diffusers_difference(resolve_base("tiny-sdxl").source, output / "controlnet", sdxl=True) > 1e-5


STEPS = 12


def controlnet_train(run_dir, *extra):
    quick = ["--set", "train.log_every=1", "--set", "train.checkpoint_every=4", "--set", "validation.prompts=[]"]
    command = [sys.executable, "-m", "archdiff", "train", "-r", "demo-controlnet", "-o", str(run_dir), "--max-steps", str(STEPS)]
    return [*command, *quick, *extra]


def test_a_killed_controlnet_run_resumes_bit_for_bit(tmp_path):
    whole = subprocess.run(controlnet_train(tmp_path / "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(controlnet_train(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        rows = MetricsLog.read_if_exists(killed / "metrics.jsonl") if (killed / "metrics.jsonl").is_file() else []
        if rows and rows[-1]["step"] >= 6:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "controlnet").exists()
    resumed = subprocess.run(controlnet_train(killed, "--resume", "latest"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = load_file(tmp_path / "whole" / CONTROLNET_WEIGHTS), load_file(killed / CONTROLNET_WEIGHTS)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_export_says_a_controlnet_needs_no_export(controlnet_run):
    from archdiff.errors import UserError
    from archdiff.export import export_run

    with pytest.raises(UserError, match=r"is a ControlNet run without a LoRA: .*controlnet is already a diffusers ControlNet"):
        export_run(controlnet_run.run_dir, "kohya")
