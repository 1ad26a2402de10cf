"""Inference: a base pipeline plus LoRA adapters, images with their settings in PNG text chunks, a grid.

It goes through plain diffusers (`from_pretrained`, `load_lora_weights`, `set_adapters`), so what
`archdiff sample` draws is what anyone's diffusers code draws from the same files and seed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from archdiff.errors import UserError
from archdiff.run_files import LORA_WEIGHTS, read_run_recipe


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora PATH[:SCALE]`: a run folder or a .safetensors file, and its strength."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        path, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:
                pass
        return cls(Path(path).expanduser(), scale)

    def weights_file(self) -> Path:
        """The LoRA file behind this spec; a clear error when there is none."""
        if self.path.is_dir():
            weights = self.path / LORA_WEIGHTS
            if not weights.is_file():
                raise UserError(f"--lora '{self.path}' holds no LoRA ({LORA_WEIGHTS} is missing)")
            return weights
        if self.path.is_file() and self.path.suffix == ".safetensors":
            return self.path
        raise UserError(f"--lora '{self.path}' is neither a run folder nor a .safetensors LoRA file")

    @property
    def label(self) -> str:
        return f"{self.path}:{self.scale:g}"


def run_recipe(loras: list[LoraSpec]) -> dict:
    """The first --lora run folder's recipe: it names the base and the size the LoRA was trained at."""
    for lora in loras:
        if lora.path.is_dir():
            return read_run_recipe(lora.path)
    return {}


def load_pipeline(source: str, loras: list[LoraSpec], family: str = "sd15"):
    """The base's own pipeline class (SDXL or SD 1.x/2.x), with every LoRA loaded as a named adapter."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(source, dtype=dtype, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    names = []
    for index, lora in enumerate(loras):
        name, weights = f"lora{index}", lora.weights_file()
        try:
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=name)
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"--lora '{lora.path}' could not be loaded onto this base: {str(exc).splitlines()[0]}") from None
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    return pipe.to("cuda" if cuda else "cpu")


def generate(
    pipe, prompt: str, seeds: list[int], steps: int, guidance: float, width: int | None, height: int | None
) -> list[Image.Image]:
    """One image per seed, each from its own CPU generator, so any image can be redrawn alone."""
    import torch
    from tqdm.auto import tqdm

    images = []
    for seed in tqdm(seeds, desc="sample", unit="img", leave=False, disable=len(seeds) < 2):
        generator = torch.Generator("cpu").manual_seed(seed)
        result = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height, generator=generator)
        images.append(result.images[0])
    return images


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
    info.add_text("parameters", lines)
    return info


def save_images(images: list[Image.Image], seeds: list[int], settings: dict[str, object], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        path = folder / f"{index:02d}-seed{seed}.png"
        meta = {**settings, "seed": seed, "width": image.width, "height": image.height}
        image.save(path, pnginfo=png_info(meta))
        paths.append(path)
    grid(images).save(folder / "grid.png")
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
) -> list[Path]:
    """What `archdiff sample` does: resolve everything, draw `num_images` seeds from `seed`, save."""
    from archdiff.model.base import resolve_base

    for lora in loras:
        lora.weights_file()  # every --lora is checked before anything heavy is loaded
    recipe = run_recipe(loras)
    base_name = base or recipe.get("base")
    if not base_name:
        raise UserError("no --base given and no --lora run folder to take it from; pass --base (e.g. --base tiny-sd15)")
    resolved = resolve_base(base_name)
    if width is None and height is None:
        width = height = recipe.get("data", {}).get("resolution")
    pipe = load_pipeline(resolved.source, loras, resolved.family)
    seeds = list(range(seed, seed + num_images))
    images = generate(pipe, prompt, seeds, steps, guidance, width, height)
    settings = {"prompt": prompt, "base": base_name, "lora": [lora.label for lora in loras], "steps": steps, "guidance": guidance}
    return save_images(images, seeds, settings, output or default_output(prompt))
