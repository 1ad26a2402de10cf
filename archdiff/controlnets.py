"""ControlNet-guided sampling: which ControlNet each `--control` image steers with, checked before any model loads.

A control image (a sketch, a plan, a photo) is sized like an img2img start image, then turned into the map the
ControlNet was trained on (archdiff.data.controls). The pipeline is diffusers' own ControlNet pipeline built
around the already-loaded base (`from_pipe`), so LoRAs stay loaded and the images equal what plain diffusers draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from archdiff.errors import UserError, first_line
from archdiff.model.controlnet import ControlNetSource, find_controlnet


@dataclass(frozen=True)
class Control:
    """One `--control IMAGE` with the extractor, ControlNet and weight it is paired with."""

    image: Path
    control_type: str
    controlnet: ControlNetSource
    scale: float
    canny: tuple[int, int] = (100, 200)  # the run's data.control.canny_low/high: thresholds it trained with


def _check_type(control_type: str, where: str) -> str:
    from archdiff.data.controls import CONTROL_TYPES, DEPTH_TYPE

    if control_type == DEPTH_TYPE:  # a neural extractor: its maps are made beforehand, then used as given
        raise UserError(
            f"{where}: depth maps are not made while sampling; make one with `archdiff data controls --type depth` "
            "and pass it with --control-type none"
        )
    if control_type not in CONTROL_TYPES:
        raise UserError(f"{where}: unknown control type '{control_type}'; choose one of: {', '.join(CONTROL_TYPES)}")
    return control_type


def _check_scale(scale: object, where: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UserError(f"{where} must be a finite number, 0 or more (got {scale!r})")
    return float(scale)


def _paired(values: list, count: int, option: str) -> list:
    if values and len(values) != count:
        raise UserError(
            f"{option} given {len(values)} times for {count} --control images; give it once per --control, or not at all"
        )
    return values or [None] * count


def parse_controls(images: list[Path], types: list[str], controlnets: list[str], scales: list[float]) -> list[Control]:
    """The repeatable --control options paired by position, with defaults from each ControlNet run's recipe."""
    if not images:
        extra = [
            option
            for option, values in (("--controlnet", controlnets), ("--control-type", types), ("--control-scale", scales))
            if values
        ]
        if extra:
            raise UserError(f"{extra[0]} needs a --control image to steer with")
        return []
    if not controlnets:
        raise UserError("--control needs a ControlNet to steer with; pass --controlnet RUN|FOLDER|HUB_ID")
    if len(controlnets) != len(images):
        raise UserError(
            f"{len(images)} --control images but {len(controlnets)} --controlnet; give one --controlnet per --control"
        )
    for image in images:
        if not image.is_file():
            raise UserError(f"--control '{image}' is not a file")
    controls = []
    for image, control_type, where, scale in zip(
        images,
        _paired(types, len(images), "--control-type"),
        controlnets,
        _paired(scales, len(images), "--control-scale"),
        strict=True,
    ):
        if control_type is not None:
            _check_type(control_type, "--control-type")
        if scale is not None:
            _check_scale(scale, "--control-scale")
        net = find_controlnet(where)
        trained_type, trained_scale, canny = trained_settings(net)
        controls.append(Control(image, control_type or trained_type, net, trained_scale if scale is None else scale, canny))
    return controls


def trained_settings(net: ControlNetSource) -> tuple[str, float, tuple[int, int]]:
    """The control type, scale and Canny thresholds a ControlNet run trained with (none, 1.0, 100/200 for any other)."""
    trained_type = _recipe_value(net, ("data", "control", "type")) or "none"
    control_type = _check_type(str(trained_type), f"{net.recipe_path}: data.control.type")
    scale = _check_scale(_recipe_value(net, ("controlnet", "scale"), 1.0), f"{net.recipe_path}: controlnet.scale")
    canny = tuple(
        _recipe_value(net, ("data", "control", key), default) for key, default in (("canny_low", 100), ("canny_high", 200))
    )
    return control_type, scale, canny


def _recipe_value(net: ControlNetSource, keys: tuple[str, ...], default: object = None) -> object:
    """A nested setting of the ControlNet's run recipe (e.g. data.control.type), or `default` when it is absent."""
    value: object = net.recipe
    for depth, key in enumerate(keys):
        if value is None:
            return default
        if not isinstance(value, dict):
            where = ".".join(keys[:depth])
            raise UserError(f"{net.recipe_path}: '{where}' is not a mapping of settings; it may be truncated or edited by hand")
        value = value.get(key)
    return default if value is None else value


def control_maps(controls: list[Control], width: int | None, height: int | None, resolution: int, step: int) -> list[Image.Image]:
    """Each control image sized like an img2img start (the first one's bucket, or --width/--height), then extracted."""
    from archdiff.data.controls import extract_control
    from archdiff.sample import init_image_for

    maps = []
    for control in controls:
        sized = init_image_for(control.image, width, height, resolution, step, option="--control")
        width, height = sized.size  # every later control takes the first one's size: one image size per draw
        low, high = control.canny
        maps.append(extract_control(sized, control.control_type, canny_low=low, canny_high=high))
    return maps


def control_pipeline(base_pipe, controlnet):
    """The ControlNet pipeline of the base's family around `base_pipe`'s modules (LoRAs included): no second copy.

    `controlnet` is one ControlNetModel or a list of them (diffusers then combines them as a MultiControlNet).
    """
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    kind = (
        StableDiffusionXLControlNetPipeline
        if isinstance(base_pipe, StableDiffusionXLPipeline)
        else StableDiffusionControlNetPipeline
    )
    pipe = kind.from_pipe(base_pipe, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_controlnets(controls: list[Control], dtype, device):
    """One ControlNetModel per control (a ControlNet named twice loads once); a single one stays unwrapped."""
    from diffusers import ControlNetModel

    from archdiff.sample import quiet_loading

    loaded = {}
    for control in controls:
        net = control.controlnet
        if net.source not in loaded:
            try:
                with quiet_loading():
                    loaded[net.source] = ControlNetModel.from_pretrained(net.source, dtype=dtype).to(device)
            except Exception as exc:  # noqa: BLE001 - a damaged or partial ControlNet: one line naming it
                raise UserError(f"--controlnet '{net.label}' could not be loaded: {first_line(exc)}") from None
    models = [loaded[control.controlnet.source] for control in controls]
    return models[0] if len(models) == 1 else models


def pipe_arguments(controls: list[Control], maps: list[Image.Image]) -> dict:
    """What the ControlNet pipeline takes besides the prompt: one image and scale, or lists of them."""
    scales = [control.scale for control in controls]
    if len(maps) == 1:
        return {"image": maps[0], "controlnet_conditioning_scale": scales[0]}
    return {"image": maps, "controlnet_conditioning_scale": scales}


def adherence(controls: list[Control], maps: list[Image.Image], images: list[Image.Image]) -> list[list[float]]:
    """How well each image follows each of its controls: F1 of the image's own control map against the one used."""
    from archdiff.data.controls import control_f1

    pairs = list(zip(controls, maps, strict=True))
    return [
        [round(control_f1(m, image, c.control_type, canny_low=c.canny[0], canny_high=c.canny[1]), 4) for c, m in pairs]
        for image in images
    ]


def adherence_lines(controls: list[Control], scores: list[list[float]]) -> list[str]:
    """One printed line per control: `control adherence (F1, lines): 0.41 0.38`."""
    lines = []
    for index, control in enumerate(controls):
        which = f" of {control.image.name}" if len(controls) > 1 else ""
        values = " ".join(f"{row[index]:.2f}" for row in scores)
        lines.append(f"control adherence{which} (F1, {control.control_type}): {values}")
    return lines


def control_settings(controls: list[Control]) -> dict[str, object]:
    """The PNG text chunks of the controls (file names only: sample images get shared)."""
    return {
        "control": [control.image.name for control in controls],
        "control_type": [control.control_type for control in controls],
        "controlnet": [control.controlnet.name for control in controls],
        "control_scale": [control.scale for control in controls],
    }


def a1111_controls(settings: dict[str, object]) -> str:
    """The `ControlNet N: "Module: ..., Model: ..., Weight: ..."` entries of A1111's ControlNet extension."""
    entries = zip(settings["control_type"], settings["controlnet"], settings["control_scale"], settings["control"], strict=True)
    text = "".join(
        f', ControlNet {i}: "Module: {kind}, Model: {model}, Weight: {scale}, Image: {image}"'
        for i, (kind, model, scale, image) in enumerate(entries)
    )
    if "control_f1" in settings:
        text += f", Control F1: {' '.join(f'{score:.3f}' for score in settings['control_f1'])}"
    return text


def side_by_side(control: Image.Image | list[Image.Image], images: list[Image.Image]) -> Image.Image:
    """One row: the control map(s), then the images drawn from them (control | results), at the images' height."""
    controls = control if isinstance(control, list) else [control]
    height = images[0].height
    tiles = [c.convert("RGB").resize((max(1, round(c.width * height / c.height)), height)) for c in controls] + list(images)
    sheet = Image.new("RGB", (sum(tile.width for tile in tiles), height), "white")
    left = 0
    for tile in tiles:
        sheet.paste(tile, (left, 0))
        left += tile.width
    return sheet


def save_control_maps(maps: list[Image.Image], folder: Path) -> list[Path]:
    """control-00.png, ...: the maps the ControlNet actually saw, beside the images."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"control-{index:02d}.png" for index in range(len(maps))]
    for path, control in zip(paths, maps, strict=True):
        control.save(path)
    return paths


def save_guided(
    images: list[Image.Image], seeds: list[int], settings: dict, folder: Path, controls: list[Control], maps: list[Image.Image]
) -> list[Path]:
    """The images with their control settings and adherence in each PNG, the maps used, and a control | results grid."""
    from archdiff.sample import save_images

    scores = adherence(controls, maps, images)
    for line in adherence_lines(controls, scores):
        print(line)
    per_image = [{"control_f1": row} for row in scores]
    paths = save_images(images, seeds, settings | control_settings(controls), folder, per_image, side_by_side(maps, images))
    save_control_maps(maps, folder)
    return paths
