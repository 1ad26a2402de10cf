"""Drawing `archdiff eval`'s images, each once: RUN/eval/images/<row>/<key>.png, keyed by what made it.

The key covers the prompt, seed, size, sampling settings, the weights (the checkpoint's files, or the base's name) and
the control image, so a second `eval` (another metric, more checkpoints) draws only what it has not drawn, and nothing
stale is ever reused. Each PNG is written under a temporary name and renamed: a Ctrl-C loses at most the image being
drawn, and the PNG carries the same settings `archdiff sample` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from archdiff.eval.plan import Job

IMAGES_DIR = "images"


@dataclass(frozen=True)
class Row:
    """One line of the report: the base alone, or a checkpoint: its LoRA folder (checkpoint_loras) and/or, for a
    ControlNet run, the checkpoint folder its ControlNet is built from."""

    name: str  # "base" or "step-000100"
    step: int | None
    lora: Path | None
    weights_id: str  # what the images depend on: the base's name, or the checkpoint files' digest
    controlnet: Path | None = None


@dataclass(frozen=True)
class DrawSettings:
    base_name: str
    base_source: str
    family: str
    steps: int
    guidance: float
    recipe: object = None  # a ControlNet run's Recipe: how its checkpoints' ControlNets are built
    controls: list | None = None  # per job: the control image a ControlNet row follows
    vae: str | None = None  # a run's `vae:` folder, drawn with instead of the base's vae/


def image_key(job: Job, row: Row, settings: DrawSettings, control_id: str | None) -> str:
    spec = {
        "prompt": job.prompt,
        "seed": job.seed,
        "size": [job.width, job.height],
        "steps": settings.steps,
        "guidance": settings.guidance,
        "base": settings.base_name,
        "vae": settings.vae,
        "weights": row.weights_id,
        "control": control_id,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def image_paths(
    eval_dir: Path, rows: list[Row], jobs: list[Job], settings: DrawSettings, control_ids=None
) -> dict[str, list[Path]]:
    """Where each row's images are (drawn or not): one path per job, in job order."""
    ids = control_ids or [None] * len(jobs)
    return {
        row.name: [
            eval_dir / IMAGES_DIR / row.name / f"{image_key(job, row, settings, cid)}.png"
            for job, cid in zip(jobs, ids, strict=True)
        ]
        for row in rows
    }


def draw_missing(rows: list[Row], jobs: list[Job], paths: dict[str, list[Path]], settings: DrawSettings) -> tuple[int, int]:
    """Draw every image not on disk yet, one pipeline for all rows (each checkpoint's LoRA switched in as an adapter).

    Returns (drawn, reused). The pipeline is loaded only when something is missing.
    """
    from tqdm.auto import tqdm

    missing = {row.name: [i for i, path in enumerate(paths[row.name]) if not path.is_file()] for row in rows}
    total = sum(len(indices) for indices in missing.values())
    reused = sum(len(p) for p in paths.values()) - total
    if not total:
        return 0, reused
    pipe = _pipeline(settings)
    styled = False
    with tqdm(total=total, desc="draw", unit="img") as bar:
        for row in rows:  # the base first (see eval/run.py): no adapter or style has been loaded yet
            if not missing[row.name]:
                continue
            bar.set_postfix_str(row.name)
            if row.controlnet is not None and not styled:
                _merge_style(pipe, settings)
                styled = True
            with _adapter(pipe, row):
                drawing = _controlnet_pipeline(pipe, row, settings) if row.controlnet is not None else pipe
                for index in missing[row.name]:
                    guide = _guide(settings, index) if row.controlnet is not None else {}
                    _draw_one(drawing, jobs[index], row, settings, paths[row.name][index], guide)
                    bar.update()
    return total, reused


def _pipeline(settings: DrawSettings):
    from archdiff.sample import load_pipeline

    return load_pipeline(settings.base_source, [], settings.family, vae=settings.vae)


def _merge_style(pipe, settings: DrawSettings) -> None:
    """A ControlNet run's frozen style LoRA, merged into the UNet as training merged it (after the base row's images)."""
    from archdiff.model.base import resolve_base
    from archdiff.model.lora import merge_frozen_lora

    if settings.recipe.controlnet.style_lora:
        merge_frozen_lora(pipe.unet, settings.recipe.controlnet.style_lora, resolve_base(settings.base_name))


def _controlnet_pipeline(pipe, row: Row, settings: DrawSettings):
    """The checkpoint's ControlNet, built as training built it (from the UNet, or controlnet.init, with its LoRA) and
    loaded with the checkpoint's trained tensors, around the base pipeline's modules."""
    from safetensors.torch import load_file

    from archdiff.controlnets import control_pipeline
    from archdiff.model.base import resolve_base
    from archdiff.model.controlnet import load_controlnet
    from archdiff.train.checkpoints import CONTROLNET_FILE, load_trained_state
    from archdiff.train.checks import check_controlnet_options

    recipe = settings.recipe
    init = check_controlnet_options(recipe, resolve_base(settings.base_name))
    controlnet = load_controlnet(recipe.controlnet, pipe.unet, init)
    load_trained_state(controlnet, load_file(row.controlnet / CONTROLNET_FILE))
    return control_pipeline(pipe, controlnet.eval().to(pipe.device, dtype=pipe.dtype))


def _guide(settings: DrawSettings, index: int) -> dict:
    return {"image": settings.controls[index], "controlnet_conditioning_scale": settings.recipe.controlnet.scale}


class _adapter:
    """A checkpoint's LoRA loaded as an adapter for the row's images and deleted after (the base row loads none)."""

    def __init__(self, pipe, row: Row):
        self.pipe, self.row = pipe, row

    def __enter__(self):
        from archdiff.errors import UserError, first_line
        from archdiff.model.lora import load_adapter
        from archdiff.run_files import LORA_WEIGHTS
        from archdiff.sample import quiet_loading

        if self.row.lora is not None:
            try:
                with quiet_loading():
                    load_adapter(self.pipe, str(self.row.lora), LORA_WEIGHTS, self.row.name)
            except Exception as error:  # noqa: BLE001 - a checkpoint that does not fit the base: one line naming it
                raise UserError(f"{self.row.name}'s LoRA could not be loaded onto the base: {first_line(error)}") from None
            self.pipe.set_adapters([self.row.name])
        return self

    def __exit__(self, *exc):
        if self.row.lora is not None:
            self.pipe.delete_adapters(self.row.name)


def _draw_one(pipe, job: Job, row: Row, settings: DrawSettings, path: Path, guide: dict) -> None:
    import tempfile

    from archdiff.sample import generate, png_info

    image = generate(pipe, job.prompt, [job.seed], settings.steps, settings.guidance, job.width, job.height, **guide)[0]
    meta = {
        "prompt": job.prompt,
        "base": settings.base_name,
        "lora": [] if row.lora is None else [f"{row.name}:1"],
        **({"controlnet": [f"{row.name}:{settings.recipe.controlnet.scale}"]} if guide else {}),
        "steps": settings.steps,
        "guidance": settings.guidance,
        "seed": job.seed,
        "width": image.width,
        "height": image.height,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(staging, pnginfo=png_info(meta))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
