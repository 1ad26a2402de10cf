"""ControlNet run variants on the tiny base: a LoRA on the ControlNet, a UNet LoRA beside it, a frozen style LoRA
under it, a trained ControlNet to start from, cached controls, and controls extracted from unpaired targets.
Every run is a few steps of demo-controlnet, in process."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.errors import UserError
from archdiff.run_files import MetricsLog
from archdiff.train.run import run

pytestmark = pytest.mark.slow

CONTROLNET_WEIGHTS = "controlnet/diffusion_pytorch_model.safetensors"
QUIET = ["validation.prompts=[]", "train.checkpoint_every=null"]


def controlnet_run(output, steps, *overrides, recipe="demo-controlnet"):
    """A `steps`-step run whose held-out loss is measured at step 0 and at its last step."""
    return run(
        load_recipe(recipe, [f"output={output}", f"train.max_steps={steps}", f"train.val_every={steps}", *QUIET, *overrides])
    )


def step0_val_loss(run_dir) -> float:
    (row,) = [row for row in MetricsLog.read(run_dir / "metrics.jsonl") if row["step"] == 0]
    return row["val_loss"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_base):
    """A 6-step ControlNet trained in full: what controlnet.init starts from."""
    return controlnet_run(tmp_path_factory.mktemp("full") / "run", 6)


def base_controlnet_state(tiny_base, seed=42) -> dict:
    """The ControlNet a run builds from the base UNet: from_unet draws its conditioning embedding at random, after the
    run's set_seed(train.seed)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet).state_dict()


def merged(base: dict, lora: dict, scale: float) -> dict:
    """`base` with every linear LoRA pair of `lora` (peft keys: MODULE.lora_A.weight / MODULE.lora_B.weight) added in."""
    out = dict(base)
    for key in lora:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            out[f"{module}.weight"] = base[f"{module}.weight"] + scale * lora[f"{module}.lora_B.weight"] @ lora[key]
    return out


# 1. controlnet.lora


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base):
    output = tmp_path_factory.mktemp("lora") / "run"
    return controlnet_run(output, 10, "controlnet.lora={rank: 4, alpha: 4}", "train.checkpoint_every=5")


ZERO_CONVOLUTIONS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


def test_a_fresh_controlnet_lora_checkpoints_its_lora_and_zero_convolutions_and_saves_a_plain_merged_controlnet(
    lora_run, tiny_base
):
    """A ControlNet made from the UNet starts with zero convolutions on every output: a LoRA upstream of them gets no
    gradient, so they (and the control's embedding) train in full beside it; nothing else of the ControlNet is stored."""
    from diffusers import ControlNetModel

    run_dir = lora_run.run_dir
    final = load_file(run_dir / "checkpoints" / "step-000010" / "controlnet.safetensors")
    lora = {key: value for key, value in final.items() if ".lora_A." in key or ".lora_B." in key}
    beside = {key: value for key, value in final.items() if key not in lora}
    assert lora and beside and all(key.startswith(ZERO_CONVOLUTIONS) for key in beside)
    assert load_file(run_dir / "checkpoints" / "step-000005" / "controlnet.safetensors").keys() == final.keys()
    saved = load_file(run_dir / CONTROLNET_WEIGHTS)
    assert not any("lora" in key for key in saved)
    base = base_controlnet_state(tiny_base)
    expected = {**merged(base, lora, scale=4 / 4), **beside}
    assert saved.keys() == expected.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(saved[key], base[key]) for key in lora_keys_as_weights(lora)), "the LoRA learnt"
    plain = ControlNetModel.from_pretrained(run_dir / "controlnet")  # plain diffusers, no peft adapter
    assert not getattr(plain, "peft_config", None)


def lora_keys_as_weights(lora: dict) -> list[str]:
    return [key.removesuffix(".lora_A.weight") + ".weight" for key in lora if key.endswith(".lora_A.weight")]


def test_a_controlnet_lora_learns_from_a_fresh_controlnet(lora_run, tiny_base):
    saved = load_file(lora_run.run_dir / CONTROLNET_WEIGHTS)
    base = base_controlnet_state(tiny_base)
    assert any(not torch.equal(saved[key], base[key]) for key in saved), "the saved ControlNet is the untrained one"
    assert lora_run.final_val_loss < lora_run.first_val_loss


def test_a_fresh_controlnet_lora_resumes_bit_for_bit(lora_run, tmp_path):
    import shutil

    copy = Path(shutil.copytree(lora_run.run_dir, tmp_path / "run"))
    shutil.rmtree(copy / "checkpoints" / "step-000010")
    shutil.rmtree(copy / "controlnet")
    run(load_recipe(str(copy / "recipe.yaml"), [f"output={copy}"]), resume="latest")
    expected, got = load_file(lora_run.run_dir / CONTROLNET_WEIGHTS), load_file(copy / CONTROLNET_WEIGHTS)
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)


def test_a_controlnet_lora_on_a_trained_controlnet_learns_and_checkpoints_only_its_lora(full_run, tmp_path):
    result = controlnet_run(
        tmp_path / "run",
        10,
        f"controlnet.init={full_run.run_dir}",
        "controlnet.lora={rank: 4, alpha: 4}",
        "train.checkpoint_every=10",
    )
    assert result.first_val_loss == pytest.approx(full_run.final_val_loss, abs=1e-4)
    assert result.final_val_loss < result.first_val_loss
    checkpoint = load_file(tmp_path / "run" / "checkpoints" / "step-000010" / "controlnet.safetensors")
    assert checkpoint and all(".lora_" in key for key in checkpoint)
    saved, start = load_file(tmp_path / "run" / CONTROLNET_WEIGHTS), load_file(full_run.run_dir / CONTROLNET_WEIGHTS)
    expected = merged(start, checkpoint, scale=1.0)
    assert any(not torch.equal(saved[k], start[k]) for k in saved)
    for key in saved:
        torch.testing.assert_close(saved[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


# 2. controlnet.unet_lora


def test_a_unet_lora_beside_the_controlnet_is_saved_and_checkpointed(tmp_path):
    from diffusers import ControlNetModel

    run_dir = tmp_path / "run"
    controlnet_run(run_dir, 6, "controlnet.unet_lora=true", "train.checkpoint_every=6")
    ControlNetModel.from_pretrained(run_dir / "controlnet")
    lora = load_file(run_dir / "pytorch_lora_weights.safetensors")
    assert lora and all(key.startswith("unet.") and ".lora_" in key for key in lora)
    assert any(key.startswith("lora_unet_") for key in load_file(run_dir / "demo-controlnet.safetensors"))
    checkpoint = run_dir / "checkpoints" / "step-000006"
    assert {p.name for p in checkpoint.glob("*.safetensors")} == {"adapter.safetensors", "controlnet.safetensors"}
    assert not any(".lora_" in key for key in load_file(checkpoint / "controlnet.safetensors")), "the ControlNet trains in full"


# 3. controlnet.style_lora


@pytest.fixture(scope="module")
def style_lora(tmp_path_factory, tiny_base):
    output = tmp_path_factory.mktemp("style") / "run"
    run(load_recipe("demo-tiny", [f"output={output}", "train.max_steps=4", *QUIET]))
    return output


def test_a_style_lora_is_merged_frozen_into_the_unet(style_lora, full_run, tmp_path, tiny_base):
    from diffusers import StableDiffusionPipeline

    from archdiff.model.base import resolve_base
    from archdiff.train.run import _trainable_models

    recipe = load_recipe("demo-controlnet", [f"output={tmp_path / 'run'}", f"controlnet.style_lora={style_lora}", *QUIET])
    components, _ = _trainable_models(recipe, resolve_base(recipe.base), None, "cpu")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    plain_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(style_lora)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    got, expected = components.unet.state_dict(), pipe.unet.state_dict()
    assert got.keys() == expected.keys()
    assert any(not torch.equal(expected[k], plain_unet[k]) for k in expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not any(p.requires_grad for p in components.unet.parameters())

    result = controlnet_run(tmp_path / "run", 6, f"controlnet.style_lora={style_lora}")
    assert abs(result.first_val_loss - step0_val_loss(full_run.run_dir)) > 1e-5, "step 0 is the UNet alone: the style shows"


def test_a_style_lora_of_the_other_family_is_refused_in_one_line(tmp_path):
    sdxl = tmp_path / "sdxl-style"
    run(load_recipe("demo-tiny", [f"output={sdxl}", "base=tiny-sdxl", "train.max_steps=2", *QUIET]))
    output = tmp_path / "run"
    with pytest.raises(UserError) as refused:
        controlnet_run(output, 2, f"controlnet.style_lora={sdxl}")
    assert "controlnet.style_lora" in str(refused.value) and "SDXL" in str(refused.value) and "\n" not in str(refused.value)
    assert not output.exists()


# 4. controlnet.init


@pytest.mark.parametrize("where", ["controlnet-folder", "run-folder"])
def test_a_run_starts_from_a_trained_controlnet(full_run, tmp_path, where):
    init = full_run.run_dir / "controlnet" if where == "controlnet-folder" else full_run.run_dir
    result = controlnet_run(tmp_path / "run", 1, f"controlnet.init={init}")
    assert result.first_val_loss == pytest.approx(full_run.final_val_loss, abs=1e-4)
    assert full_run.final_val_loss != full_run.first_val_loss, "the earlier run moved away from the untrained ControlNet"


# 5. data.cache.latents


def test_cached_controls_are_encoded_once_and_equal_the_uncached_ones(tmp_path, monkeypatch, capsys):
    from archdiff.data.cache import Caches, build_caches
    from archdiff.data.catalog import build_catalog, split_holdout
    from archdiff.data.images import possible_augmentations
    from archdiff.data.samples import SampleSet, control_tensor, expand_samples, prepared_control
    from archdiff.model.base import load_components, resolve_base

    monkeypatch.setenv("ARCHDIFF_CACHE", str(tmp_path / "cache"))
    first = controlnet_run(tmp_path / "first", 6, "data.cache.latents=true")
    first_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cache:")]
    controlnet_run(tmp_path / "second", 6, "data.cache.latents=true")
    second_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cache:")]
    assert len(first_line) == len(second_line) == 1
    encoded = int(first_line[0].split("controls ")[1].split()[0])
    assert encoded > 0 and f"controls 0 encoded, {encoded} reused" in second_line[0], (first_line, second_line)
    assert "latents 0 encoded" in second_line[0]
    assert first.final_val_loss != first.first_val_loss

    recipe = load_recipe(str(tmp_path / "first" / "recipe.yaml"))
    components = load_components(resolve_base(recipe.base))
    catalog = build_catalog(recipe.data, controls=True)
    train_records, _ = split_holdout(catalog.records, recipe.data.holdout, recipe.data.holdout_group, recipe.train.seed)
    samples = expand_samples(train_records, recipe.data, train=True)
    plain = SampleSet(catalog, samples, recipe.data, components.tokenizer, 0, train=True, controls=True)
    cached = SampleSet(catalog, samples, recipe.data, components.tokenizer, 0, train=True, controls=True)
    caches = build_caches([cached], True, False, components)
    assert caches.encoded["controls"] == 0
    checked = 0
    for sample in samples:
        for op in possible_augmentations(sample.record.kind, sample.bucket, recipe.data.random_flip, recipe.data.rotate_drawings):
            want = control_tensor(prepared_control(catalog, sample, recipe.data, op))
            assert torch.equal(caches.controls.get(Caches.control_key(sample, op, recipe.data)), want), (sample.record.name, op)
            checked += 1
    assert checked > len(samples), "flipped controls are cached too"
    for key in [(0, 0), (1, 3), (len(samples) - 1, 7)]:
        assert torch.equal(cached[key]["control_values"], plain[key]["control_values"])


# 6. data.control.type: canny on unpaired targets


def test_canny_controls_are_extracted_from_unpaired_targets_and_a_run_trains(tmp_path, tiny_base):
    import cv2
    import numpy as np
    from transformers import CLIPTokenizer

    from archdiff.data.catalog import build_catalog
    from archdiff.data.samples import SampleSet, expand_samples, prepared_image

    overrides = ["data.sources=[{path: facades}]", "data.control.type=canny"]
    result = controlnet_run(tmp_path / "run", 8, *overrides)
    assert result.final_val_loss != result.first_val_loss
    recipe = load_recipe(str(tmp_path / "run" / "recipe.yaml"))
    catalog = build_catalog(recipe.data, controls=True)
    assert catalog.records and all(record.control is None for record in catalog.records)
    samples = expand_samples(catalog.records, recipe.data, train=False)
    dataset = SampleSet(
        catalog, samples, recipe.data, CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer"), 0, False, controls=True
    )
    for index in range(3):
        control = dataset[index]["control_values"].numpy()
        grey = np.asarray(prepared_image(catalog, samples[index], recipe.data.max_pixels, "").convert("L"))
        edges = cv2.Canny(grey, 100, 200)
        assert set(np.unique(control)) <= {0, 255} and control.any()
        assert all(np.array_equal(channel, edges) for channel in control), samples[index].record.name
