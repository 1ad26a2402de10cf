"""Inference: a base pipeline plus LoRA adapters, images with their settings in PNG text chunks, a grid.

It goes through plain diffusers (`from_pretrained`, `load_lora_weights`, `set_adapters`), so what
`archdiff sample` draws is what anyone's diffusers code draws from the same files and seed.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from archdiff import controlnets
from archdiff.errors import UserError, first_line
from archdiff.lora_specs import LoraSpec, lora_recipe, run_recipe
from archdiff.run_files import RECIPE_FILE

VAE_FACTOR = 8  # the VAE halves the size 3 times: image sides are multiples of 8
MAX_SIDE = 4096  # px per side; far beyond what SD 1.x or SDXL draw well, and already tens of GB of activations
MAX_SEED = 2**32  # what every generator takes (torch's range is wider; numpy's and most UIs' is this): seeds stay portable


def _whole(value: object, name: str, path: Path) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise UserError(f"{path}: {name} is {value!r}, not a positive whole number")
    return value


def check_sample_settings(
    *, steps: int, guidance: float, num_images: int, width: int | None, height: int | None, strength: float, seed: int = 0
) -> None:
    """Every number `sample` takes, checked before anything loads: one line naming the value and what it must be."""
    if not 0 <= seed <= MAX_SEED - max(num_images, 1):
        raise UserError(f"--seed {seed} is out of range: image i uses seed + i, which must stay between 0 and {MAX_SEED - 1}")
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1 (got {num_images})")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise UserError(f"--guidance must be a finite number, 0 or more (got {guidance})")
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise UserError(f"--strength must be above 0 and at most 1 (got {strength})")
    for option, side in (("--width", width), ("--height", height)):
        if side is None:
            continue
        if side <= 0:
            raise UserError(f"{option} must be a positive multiple of {VAE_FACTOR} (got {side})")
        if side > MAX_SIDE:
            raise UserError(f"{option} {side} is over the limit of {MAX_SIDE} px per side")
        if side % VAE_FACTOR:
            lower, upper = side - side % VAE_FACTOR, side - side % VAE_FACTOR + VAE_FACTOR
            nearest = f"{lower} or {upper}" if lower else str(upper)
            raise UserError(f"{option} {side} is not a multiple of {VAE_FACTOR} (the VAE's factor); use {nearest}")


def load_pipeline(
    source: str,
    loras: list[LoraSpec],
    family: str = "sd15",
    device: str | None = None,
    fuse: bool = False,
    vae: str | None = None,
):
    """The base family's own pipeline class (SD 1.x/2.x, SDXL, SD 3.x) with every LoRA as a named adapter at its scale.

    `fuse` merges the weighted adapters into the base weights and drops the adapter layers: the same
    images (up to float rounding), faster steps. `vae`: an AutoencoderKL folder that replaces the base's (a run's `vae:`).
    """
    import torch
    from diffusers import AutoencoderKL

    from archdiff.model.families import FAMILIES
    from archdiff.model.lora import load_adapter

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        with quiet_loading():
            parts = {"vae": AutoencoderKL.from_pretrained(vae, dtype=dtype)} if vae else {}
    except Exception as exc:  # noqa: BLE001 - its headers were checked; a damaged tensor is still one line
        raise UserError(f"vae '{vae}' could not be loaded: {first_line(exc)}") from None
    try:
        with quiet_loading():
            kind = FAMILIES[family]
            pipe = kind.pipeline_class().from_pretrained(source, dtype=dtype, **kind.pipeline_extras(), **parts)
    except Exception as exc:  # noqa: BLE001 - a broken or partial base (Hub cache included): one line naming it
        raise UserError(f"base '{source}' could not be loaded: {first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    names = []
    for index, lora in enumerate(loras):
        name, (where, weight_name) = f"lora{index}", lora.location()
        try:
            with quiet_loading():
                load_adapter(pipe, where, weight_name, name)  # LoKr/LoHa through peft, the rest through diffusers
        except Exception as exc:  # noqa: BLE001 - a wrong file, a LoRA for another base, an unreachable Hub: one line each
            reason = first_line(exc)
            raise UserError(f"--lora '{lora.path}' could not be loaded onto this base: {reason}") from None
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
        if fuse:
            pipe.fuse_lora(adapter_names=names, lora_scale=1.0)  # the per-adapter weights are set just above
            pipe.unload_lora_weights()
    return pipe.to(device)


@contextmanager
def quiet_loading():
    """No loading bars, and no log of a failed load (diffusers logs every size mismatch before raising): a failure
    is reported as one line from the exception, and a success says what it wrote."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def generate(
    pipe,
    prompt: str,
    seeds: list[int],
    steps: int,
    guidance: float,
    width: int | None,
    height: int | None,
    init_image: Image.Image | None = None,
    strength: float = 0.6,
    **guide,
) -> list[Image.Image]:
    """One image per seed, each from its own CPU generator, so any image can be redrawn alone.

    With `init_image`, `pipe` is an img2img pipeline: the output takes the init image's size. `guide`: a
    ControlNet pipeline's control `image` and `controlnet_conditioning_scale`.
    """
    import torch
    from tqdm.auto import tqdm

    size = {"image": init_image, "strength": strength} if init_image is not None else {"width": width, "height": height}
    images = []
    for seed in tqdm(seeds, desc="sample", unit="img", leave=False, disable=len(seeds) < 2):
        generator = torch.Generator("cpu").manual_seed(seed)
        result = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, **size, **guide)
        images.append(result.images[0])
    return images


def init_image_for(
    path: Path, width: int | None, height: int | None, resolution: int, step: int, option: str = "--init-image"
) -> Image.Image:
    """A sketch or photo to start from, cropped to the bucket of its shape the LoRA trained at (or to --width/--height).

    Any image mode (1-bit sketches, palette, CMYK, EXIF-rotated photos) reads upright as RGB; the
    line-keeping drawing filter shrinks it, so thin pencil lines survive.
    """
    from archdiff.config.schema import DataConfig
    from archdiff.data.images import UnreadableImage, open_image

    if not path.is_file():
        raise UserError(f"{option} '{path}' is not a file")
    try:
        image = open_image(path, max_pixels=DataConfig.model_fields["max_pixels"].default)
    except UnreadableImage as error:
        raise UserError(f"{option} '{path}': {error}") from None
    return fit_to_bucket(image, width, height, resolution, step)


def fit_to_bucket(image: Image.Image, width: int | None, height: int | None, resolution: int, step: int) -> Image.Image:
    """`image` scaled to cover, then centre-cut to --width/--height, or to the bucket of its shape at `resolution`."""
    from archdiff.data.buckets import assign_bucket, cover_size, make_buckets
    from archdiff.data.images import resize

    if width and height:
        target = (width, height)
    else:
        target = assign_bucket(image.width, image.height, make_buckets(resolution * resolution, step, max_aspect=4.0))
    resized = resize(image, cover_size(image.width, image.height, target), "drawing")
    left, top = (resized.width - target[0]) // 2, (resized.height - target[1]) // 2
    return resized.crop((left, top, left + target[0], top + target[1]))


def grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    return sheet


def png_info(settings: dict[str, object]) -> PngInfo:
    """Settings as PNG text chunks, plus an A1111-style `parameters` chunk that image viewers and WebUIs read."""
    info = PngInfo()
    for key, value in settings.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    lines = f"{settings['prompt']}\nSteps: {settings['steps']}, CFG scale: {settings['guidance']}, Seed: {settings['seed']}, "
    lines += f"Size: {settings['width']}x{settings['height']}, Model: {settings['base']}"
    if settings.get("lora"):
        lines += f", Lora: {', '.join(settings['lora'])}"
    if "strength" in settings:
        lines += f", Denoising strength: {settings['strength']}"
    if settings.get("control"):
        lines += controlnets.a1111_controls(settings)
    info.add_text("parameters", lines)
    return info


def save_images(
    images: list[Image.Image],
    seeds: list[int],
    settings: dict[str, object],
    folder: Path,
    per_image: list[dict[str, object]] | None = None,
    sheet: Image.Image | None = None,
) -> list[Path]:
    """Each image with its settings (and its own `per_image` ones) in its PNG, and `sheet` (else a grid) as grid.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        path = folder / f"{index:02d}-seed{seed}.png"
        meta = {**settings, **(per_image[index] if per_image else {}), "seed": seed, "width": image.width, "height": image.height}
        image.save(path, pnginfo=png_info(meta))
        paths.append(path)
    (sheet or grid(images)).save(folder / "grid.png")
    return paths


def default_output(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "sample"
    return Path("samples") / f"{datetime.now():%Y%m%d-%H%M%S}-{slug}"


def sample_to_folder(
    prompt: str,
    base: str | None,
    loras: list[LoraSpec],
    *,
    steps: int,
    guidance: float,
    seed: int,
    num_images: int,
    width: int | None,
    height: int | None,
    output: Path | None,
    init_image: Path | None = None,
    strength: float = 0.6,
    fuse: bool = False,
    controls: list | None = None,
) -> list[Path]:
    """What `archdiff sample` does: resolve everything, draw `num_images` seeds from `seed`, save.

    `controls` (controlnets.parse_controls, already checked) steer the drawing with ControlNets.
    """
    from archdiff.model.base import resolve_base, safetensors_header
    from archdiff.model.controlnet import check_controlnet_fits
    from archdiff.model.lora_fit import check_lora_fits
    from archdiff.outputs import check_output

    check_sample_settings(
        steps=steps, guidance=guidance, num_images=num_images, width=width, height=height, strength=strength, seed=seed
    )
    output = output or default_output(prompt)
    check_output(output, "--output", folder=True)
    controls = controls or []
    if controls and init_image is not None:
        raise UserError("--control with --init-image is not supported (no ControlNet img2img); use one of them")
    local_loras = [lora.local() for lora in loras]  # every --lora is checked (and fetched) before a model loads
    trained = next((control.controlnet for control in controls if control.controlnet.recipe), None)
    recipe = trained.recipe if trained else run_recipe(loras)  # a ControlNet run names the base and size first
    recipe_path = (
        trained.recipe_path if trained else next((lora.path / RECIPE_FILE for lora in loras if lora.path.is_dir()), None)
    )
    base_name = base or recipe.get("base")
    if not base_name:
        where = f"{recipe_path} names no base model" if recipe_path else "no --base given and no run folder to name it"
        raise UserError(f"{where}; pass --base (e.g. --base tiny-sd15)")
    base_name = str(base_name)
    data = recipe.get("data") or {}
    resolution = _whole(data.get("resolution"), "data.resolution", recipe_path)
    start = maps = None
    if init_image is not None or controls:
        step = _whole((data.get("buckets") or {}).get("step", 64), "data.buckets.step", recipe_path)
        if controls:  # sized and extracted here: a bad control image costs no model load
            maps = controlnets.control_maps(controls, width, height, resolution or 512, step)
            width, height = maps[0].size
        else:
            start = init_image_for(init_image, width, height, resolution or 512, step)
    elif width is None and height is None:
        width = height = resolution
    headers = [safetensors_header(lora.path, f"--lora '{lora.path}'") for lora in local_loras]  # whole files only
    same_base = base is None or base == str(recipe.get("base"))
    resolved = resolve_base(base_name, recipe.get("vae") if same_base else None)  # the run's `vae:`, on the run's own base
    for spec, header in zip(loras, headers, strict=True):
        recipe_base = lora_recipe(spec.path).get("base") if spec.path.is_dir() else None
        check_lora_fits(header, f"--lora '{spec.path}'", resolved, str(recipe_base) if recipe_base else None)
    if controls:
        for control in controls:
            check_controlnet_fits(control.controlnet, resolved)
    pipe = load_pipeline(resolved.source, local_loras, resolved.family, fuse=fuse, vae=resolved.vae)
    if controls:
        pipe = controlnets.control_pipeline(pipe, controlnets.load_controlnets(controls, pipe.dtype, pipe.device))
    if start is not None:
        from diffusers import AutoPipelineForImage2Image

        pipe = AutoPipelineForImage2Image.from_pipe(pipe)  # same modules, adapters included
        pipe.set_progress_bar_config(disable=True)
    seeds = list(range(seed, seed + num_images))
    guided = None
    if controls:
        guided = controlnets.pipe_arguments(controls, maps)
    images = generate(pipe, prompt, seeds, steps, guidance, width, height, start, strength, **(guided or {}))
    settings = {"prompt": prompt, "base": base_name, "lora": [lora.label for lora in loras], "steps": steps, "guidance": guidance}
    if start is not None:
        settings.update(init_image=str(init_image), strength=strength)
    if controls:
        return controlnets.save_guided(images, seeds, settings, output, controls, maps)
    return save_images(images, seeds, settings, output)
