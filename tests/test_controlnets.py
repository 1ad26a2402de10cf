"""ControlNet-guided sampling: the control options checked before a model loads, and images equal to plain diffusers'.

The tiny ControlNets here get random weights in their zero-initialised convolutions (a fresh ControlNet adds
exactly nothing), so a control image changes what is drawn.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from archdiff.controlnets import a1111_controls, control_settings, parse_controls, side_by_side
from archdiff.errors import UserError
from archdiff.model.controlnet import check_controlnet_fits, find_controlnet
from archdiff.sample import png_info, sample_to_folder

ZERO_CONVS_SCALE = 3.0  # the random weights' size: with 0.1 the control moved pixels by ~1e-4, with 3 by ~5e-3


def make_controlnet(folder: Path, base: str = "tiny-sd15", seed: int = 0) -> Path:
    """A diffusers ControlNet of the tiny base's UNet whose zero convolutions are filled with seeded random weights."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from archdiff.model.base import resolve_base

    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(resolve_base(base).source, subfolder="unet"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * ZERO_CONVS_SCALE)
    net.save_pretrained(folder)
    return folder


def make_controlnet_run(folder: Path, controlnet: Path, base: str = "tiny-sd15", extra: str = "") -> Path:
    """A ControlNet training run folder as the trainer leaves it: controlnet/ and recipe.yaml."""
    shutil.copytree(controlnet, folder / "controlnet")
    recipe = f"base: {base}\ndata:\n  resolution: 64\n  buckets:\n    step: 16\n  control:\n    type: lines\n{extra}"
    (folder / "recipe.yaml").write_text(recipe)
    return folder


def sketch(path: Path, size=(96, 64), shift: int = 0) -> Path:
    """A 1-bit line drawing of a house front (dark lines on white paper, as scanned)."""
    image = Image.new("1", size, 1)
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + shift, 20, 70 + shift, 58), outline=0, width=2)
    draw.line((10 + shift, 20, 40 + shift, 4, 70 + shift, 20), fill=0, width=2)
    draw.rectangle((30 + shift, 36, 44 + shift, 58), outline=0, width=1)
    image.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_controlnets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controlnets")
    nets = {family: make_controlnet(root / family, f"tiny-{family}") for family in ("sd15", "sdxl")}
    nets["run"] = make_controlnet_run(root / "run", nets["sd15"], extra="controlnet:\n  scale: 0.7\n")
    nets["sdxl-run"] = make_controlnet_run(root / "sdxl-run", nets["sdxl"], base="tiny-sdxl")
    return nets


def test_defaults_come_from_the_run_recipe_and_options_pair_by_position(tiny_controlnets, tmp_path):
    image = sketch(tmp_path / "a.png")
    (run,) = parse_controls([image], [], [str(tiny_controlnets["run"])], [])
    assert (run.control_type, run.scale, run.controlnet.recipe["base"]) == ("lines", 0.7, "tiny-sd15")
    assert run.controlnet.source == str(tiny_controlnets["run"] / "controlnet")
    first, second = parse_controls([image, image], ["canny", "none"], [str(tiny_controlnets["sd15"])] * 2, [0.5, 0.0])
    assert (first.control_type, first.scale, second.control_type, second.scale) == ("canny", 0.5, "none", 0.0)
    assert first.controlnet.recipe == {} and first.controlnet.name == "sd15"
    (plain,) = parse_controls([image], [], [str(tiny_controlnets["sd15"])], [])
    assert (plain.control_type, plain.scale) == ("none", 1.0), "a bare ControlNet folder: the image as given, full weight"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (dict(controlnets=[]), "--control needs a ControlNet"),
        (dict(images=[]), "--controlnet needs a --control image"),
        (dict(controlnets=["{net}", "{net}"]), "1 --control images but 2 --controlnet"),
        (dict(types=["lines", "canny"]), "--control-type given 2 times for 1 --control images"),
        (dict(types=["hed"]), "unknown control type 'hed'; choose one of: lines, canny, drawing, none"),
        (dict(scales=[float("nan")]), "--control-scale must be a finite number, 0 or more (got nan)"),
        (dict(scales=[-0.5]), "--control-scale must be a finite number, 0 or more (got -0.5)"),
        (dict(images=["missing.png"]), "--control 'missing.png' is not a file"),
        (dict(controlnets=["{tmp}"]), "is not a ControlNet run folder (with controlnet/), a ControlNet folder"),
        (dict(controlnets=["{unet}"]), "is not a ControlNet config (_class_name UNet2DConditionModel"),
    ],
)
def test_bad_control_options_are_one_line_each(tiny_controlnets, tiny_base, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    fill = {"{net}": str(tiny_controlnets["sd15"]), "{tmp}": str(tmp_path), "{unet}": str(Path(tiny_base) / "unet")}
    values = {"images": [sketch(tmp_path / "a.png")], "types": [], "controlnets": ["{net}"], "scales": []} | args
    values["controlnets"] = [fill.get(text, text) for text in values["controlnets"]]
    values["images"] = [Path(image) for image in values["images"]]
    with pytest.raises(UserError) as caught:
        parse_controls(**values)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_canny_thresholds_come_from_the_run_recipe(tiny_controlnets, tmp_path):
    """The map is made with the thresholds the ControlNet trained with: a lower pair finds more edges."""
    from archdiff.controlnets import control_maps

    run = Path(shutil.copytree(tiny_controlnets["run"], tmp_path / "run"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2)).save(
        photo
    )
    found = {}
    for low, high in ((5, 20), (100, 200)):
        (run / "recipe.yaml").write_text(
            f"base: tiny-sd15\ndata:\n  control:\n    type: canny\n    canny_low: {low}\n    canny_high: {high}\n"
        )
        (control,) = parse_controls([photo], [], [str(run)], [])
        assert control.canny == (low, high) and control.control_type == "canny"
        found[low] = int((np.asarray(control_maps([control], 96, 64, 64, 16)[0]) > 0).sum())
    assert found[5] > found[100]


@pytest.mark.parametrize(
    ("recipe", "says"),
    [
        ("data:\n  control: lines\n", "recipe.yaml: 'data.control' is not a mapping of settings"),
        ("data:\n  control:\n    type: hed\n", "recipe.yaml: data.control.type: unknown control type 'hed'"),
        ("data:\n  control:\n    type: depth\n", "data.control.type: depth maps are not made while sampling"),
        ("controlnet:\n  scale: -1\n", "recipe.yaml: controlnet.scale must be a finite number, 0 or more (got -1)"),
        ("controlnet:\n  scale: .nan\n", "controlnet.scale must be a finite number, 0 or more (got nan)"),
    ],
)
def test_a_broken_run_recipe_is_named(tiny_controlnets, tmp_path, recipe, says):
    run = Path(shutil.copytree(tiny_controlnets["run"], tmp_path / "run"))
    (run / "recipe.yaml").write_text("base: tiny-sd15\n" + recipe)
    with pytest.raises(UserError, match=re.escape(says)):
        parse_controls([sketch(tmp_path / "a.png")], [], [str(run)], [])


def test_broken_controlnet_folders_are_named(tiny_controlnets, tmp_path):
    folder = Path(shutil.copytree(tiny_controlnets["sd15"], tmp_path / "net"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or damaged"):
        find_controlnet(str(folder))
    weights.unlink()
    with pytest.raises(UserError, match="holds no weights file"):
        find_controlnet(str(folder))
    (folder / "config.json").write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        find_controlnet(str(folder))


def test_hub_controlnet_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="'someone/sketch-net' is no local path and could not be fetched from the Hub"):
        find_controlnet("someone/sketch-net")


def test_a_controlnet_for_another_family_is_named(tiny_controlnets):
    from archdiff.model.base import resolve_base

    with pytest.raises(UserError, match=r"is an SDXL ControlNet on an SD 1\.5 base \('tiny-sd15'\)"):
        check_controlnet_fits(find_controlnet(str(tiny_controlnets["sdxl"])), resolve_base("tiny-sd15"))
    with pytest.raises(UserError, match=r"is an SD 1\.5 ControlNet on an SDXL base \('tiny-sdxl'\)"):
        check_controlnet_fits(find_controlnet(str(tiny_controlnets["sd15"])), resolve_base("tiny-sdxl"))
    check_controlnet_fits(find_controlnet(str(tiny_controlnets["sdxl"])), resolve_base("tiny-sdxl"))


def test_control_settings_in_the_a1111_parameters(tiny_controlnets, tmp_path):
    controls = parse_controls(
        [sketch(tmp_path / "plan.png")] * 2, ["lines", "canny"], [str(tiny_controlnets["run"])] * 2, [1.0, 0.5]
    )
    settings = {"prompt": "a house", "base": "tiny-sd15", "steps": 2, "guidance": 5.0, "seed": 3, "width": 64, "height": 48}
    settings |= control_settings(controls) | {"control_f1": [0.41, 0.25]}
    assert control_settings(controls)["controlnet"] == ["run", "run"], "a folder's name, never a home path"
    expected = ', ControlNet 0: "Module: lines, Model: run, Weight: 1.0, Image: plan.png"'
    expected += ', ControlNet 1: "Module: canny, Model: run, Weight: 0.5, Image: plan.png", Control F1: 0.410 0.250'
    assert a1111_controls(settings) == expected
    Image.new("RGB", (64, 48)).save(tmp_path / "x.png", pnginfo=png_info(settings))
    text = Image.open(tmp_path / "x.png").text
    assert text["parameters"].endswith(expected) and json.loads(text["control_scale"]) == [1.0, 0.5]


def test_side_by_side_puts_the_control_first():
    control = Image.new("RGB", (32, 16), "white")
    images = [Image.new("RGB", (64, 32), c) for c in ("red", "blue")]
    sheet = side_by_side(control, images)
    assert sheet.size == (64 + 2 * 64, 32)
    assert sheet.getpixel((10, 10)) == (255, 255, 255) and sheet.getpixel((70, 10)) == (255, 0, 0)
    assert side_by_side([control, control], images).size == (4 * 64, 32)


def _draw_plain(
    base: str, controlnet: Path, control: Image.Image, family: str, scale: float, seed: int, steps: int, guidance: float
):
    """What anyone's diffusers code draws from the same files: no archdiff involved."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    from archdiff.model.base import resolve_base

    source = resolve_base(base).source
    if family == "sdxl":
        pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            source, controlnet=ControlNetModel.from_pretrained(controlnet), add_watermarker=False
        )
    else:
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            source, controlnet=ControlNetModel.from_pretrained(controlnet), safety_checker=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    result = pipe(
        "a house",
        image=control,
        controlnet_conditioning_scale=scale,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
    )
    return np.asarray(result.images[0])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_guided_images_equal_plain_diffusers_and_follow_the_control(family, tiny_controlnets, tmp_path, capsys):
    from archdiff.data.buckets import assign_bucket, make_buckets

    run = tiny_controlnets["run" if family == "sd15" else "sdxl-run"]
    common = dict(steps=2, guidance=5.0, seed=3, num_images=2, width=None, height=None)

    def draw(image: Path, name: str) -> list[Path]:
        controls = parse_controls([image], [], [str(run)], [])
        return sample_to_folder("a house", None, [], output=tmp_path / name, controls=controls, **common)

    paths = draw(sketch(tmp_path / "a.png"), "a")
    size = assign_bucket(96, 64, make_buckets(64 * 64, 16, 4.0))
    control = Image.open(tmp_path / "a" / "control-00.png")
    assert control.size == Image.open(paths[0]).size == size
    assert set(np.unique(np.asarray(control))) <= {0, 255} and np.asarray(control).max() == 255, "white lines on black"
    scale = 0.7 if family == "sd15" else 1.0  # the sd15 run's recipe says controlnet.scale 0.7
    plain = _draw_plain(f"tiny-{family}", run / "controlnet", control, family, scale, seed=3, steps=2, guidance=5.0)
    assert np.array_equal(np.asarray(Image.open(paths[0]).convert("RGB")), plain), "archdiff draws what diffusers draws"

    printed = capsys.readouterr().out
    assert "control adherence (F1, lines): " in printed
    text = Image.open(paths[1]).text
    assert json.loads(text["control"]) == ["a.png"] and json.loads(text["control_type"]) == ["lines"]
    f1 = json.loads(text["control_f1"])
    assert len(f1) == 1 and 0.0 <= f1[0] <= 1.0 and f"{f1[0]:.2f}" in printed
    assert 'ControlNet 0: "Module: lines, Model: ' in text["parameters"]
    assert Image.open(tmp_path / "a" / "grid.png").size == (3 * size[0], size[1]), "control | two images"

    moved = draw(sketch(tmp_path / "b.png", shift=16), "b")
    assert not np.array_equal(np.asarray(Image.open(moved[0])), np.asarray(Image.open(paths[0]))), "the control steers"


def test_two_controls_at_half_weight_equal_one_at_full(tiny_controlnets, tmp_path):
    """diffusers' MultiControlNet adds the ControlNets' residuals: the same control twice at 0.5 is it once at 1.0."""
    image, net = sketch(tmp_path / "a.png"), str(tiny_controlnets["sd15"])
    common = dict(steps=2, guidance=5.0, seed=0, num_images=1, width=96, height=64)
    one = sample_to_folder(
        "a house", "tiny-sd15", [], output=tmp_path / "one", controls=parse_controls([image], ["drawing"], [net], []), **common
    )
    both = parse_controls([image, image], ["drawing"] * 2, [net] * 2, [0.5, 0.5])
    two = sample_to_folder("a house", "tiny-sd15", [], output=tmp_path / "two", controls=both, **common)
    difference = np.abs(np.asarray(Image.open(one[0]), dtype=int) - np.asarray(Image.open(two[0]), dtype=int))
    assert difference.max() <= 1, "equal up to float rounding"
    assert (tmp_path / "two" / "control-01.png").is_file() and len(json.loads(Image.open(two[0]).text["control_f1"])) == 2
    assert Image.open(one[0]).size == (96, 64), "--width/--height size the control, and the image follows it"


def _random_lora(folder: Path) -> Path:
    """A rank-4 UNet LoRA for tiny-sd15 with random up and down weights (a fresh LoRA's zero up-weights change nothing)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from archdiff.model.base import resolve_base

    unet = UNet2DConditionModel.from_pretrained(resolve_base("tiny-sd15").source, subfolder="unet")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, unet_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def test_loras_stay_loaded_under_the_controlnet(tiny_controlnets, tmp_path):
    """`--lora` with `--control`: what diffusers draws with the same LoRA loaded into its ControlNet pipeline."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from archdiff.model.base import resolve_base
    from archdiff.sample import LoraSpec

    lora, net = _random_lora(tmp_path / "lora"), tiny_controlnets["sd15"]
    controls = parse_controls([sketch(tmp_path / "a.png")], ["drawing"], [str(net)], [])
    common = dict(steps=2, guidance=5.0, seed=0, num_images=1, width=96, height=64, controls=controls)
    with_lora = sample_to_folder("a house", "tiny-sd15", [LoraSpec(lora)], output=tmp_path / "lora-out", **common)
    without = sample_to_folder("a house", "tiny-sd15", [], output=tmp_path / "plain-out", **common)

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        resolve_base("tiny-sd15").source,
        controlnet=ControlNetModel.from_pretrained(net),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    pipe.set_progress_bar_config(disable=True)
    control = Image.open(tmp_path / "lora-out" / "control-00.png")
    expected = pipe(
        "a house", image=control, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)
    )
    drawn = np.asarray(Image.open(with_lora[0]).convert("RGB"))
    assert np.array_equal(drawn, np.asarray(expected.images[0]))
    assert np.abs(drawn.astype(int) - np.asarray(Image.open(without[0]).convert("RGB"), dtype=int)).max() > 2, "the LoRA acts"
