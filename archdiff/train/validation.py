"""Validation images: the recipe's prompts drawn by the training UNet (and ControlNet) during and after a run.

Grids go to samples/step-NNNNNN.png and the trackers; the final images, one folder per prompt with their
settings in each PNG, are what `push` shares. A ControlNet run draws each prompt from a held-out control
image and puts that control first in its row, so the grid shows control | results.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from archdiff.config import Recipe
from archdiff.run_files import SAMPLES_DIR
from archdiff.sample import generate, grid, quiet_loading, save_images
from archdiff.train.checkpoints import checkpoint_name


def training_pipeline(source: str, components, unet, controlnet=None):
    """The base family's pipeline around the in-memory (possibly training) denoiser, ControlNet and encoders: no second
    copy. SD 3.5 without T5 (memory.t5: drop) gets no T5, and draws with its zero embedding as training saw it."""
    import diffusers

    family = components.family
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = (components.tokenizer, components.tokenizer_2, components.tokenizer_3)
    parts = {family.denoiser: unet, "vae": components.vae, **family.pipeline_extras()}
    for index, encoder in enumerate(components.text_encoders):
        parts |= {names[index]: encoder, names[index].replace("text_encoder", "tokenizer"): tokenizers[index]}
    if len(family.text_encoders) > len(components.text_encoders):
        parts |= {"text_encoder_3": None, "tokenizer_3": None}
    if controlnet is not None:
        parts["controlnet"] = controlnet
    pipeline_class = getattr(diffusers, family.pipeline.replace("Pipeline", "ControlNetPipeline" if controlnet else "Pipeline"))
    with quiet_loading():  # its loading bar would sit in the middle of the training bar
        pipe = pipeline_class.from_pretrained(source, dtype=unet.dtype, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validation_controls(recipe: Recipe, sample_set) -> list[Image.Image]:
    """One control per validation prompt, from the held-out images in order (cycling), cut square at the run's size."""
    from archdiff.data.samples import Sample, prepared_control

    size = recipe.data.resolution
    samples = sample_set.samples
    picked = [samples[index % len(samples)] for index in range(len(recipe.validation.prompts))] if samples else []
    return [prepared_control(sample_set.catalog, Sample(s.record, (size, size)), sample_set.cfg) for s in picked]


def validation_rows(recipe: Recipe, source: str, components, unet, autocast, controlnet=None, controls=()) -> list[list]:
    """The validation prompts drawn by the training models: one row per prompt, one image per seed.

    Under `autocast`, as training runs: with bf16/fp16 the frozen weights are half precision, the LoRA
    fp32. The pipeline and its activations are freed afterwards, so training gets its memory back.
    """
    from diffusers.training_utils import free_memory

    cfg, size = recipe.validation, recipe.data.resolution
    models = [model for model in (unet, controlnet) if model is not None]
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    pipe = training_pipeline(source, components, unet, controlnet)
    try:
        rows = []
        with autocast():
            for index, prompt in enumerate(cfg.prompts):
                guide = {}
                if controlnet is not None:
                    guide = {"image": controls[index], "controlnet_conditioning_scale": recipe.controlnet.scale}
                rows.append(generate(pipe, prompt, cfg.seeds, cfg.steps, cfg.guidance, size, size, **guide))
        return rows
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
        del pipe
        free_memory()


def control_adherence(recipe: Recipe, rows: list[list[Image.Image]], controls) -> list[list[float]]:
    """Each validation image's control F1 against the control it was drawn from (archdiff sample prints the same)."""
    from archdiff.data.controls import control_f1

    cfg = recipe.data.control
    return [
        [round(control_f1(control, image, cfg.type, canny_low=cfg.canny_low, canny_high=cfg.canny_high), 4) for image in row]
        for control, row in zip(controls, rows, strict=True)
    ]


def log_adherence(recipe: Recipe, rows: list[list[Image.Image]], controls, accelerator, step: int) -> list[list[float]]:
    """A ControlNet run's mean control F1 over the validation images, to the trackers beside the grid."""
    scores = control_adherence(recipe, rows, controls) if controls else []
    if scores:
        flat = [score for row in scores for score in row]
        accelerator.log({"control_f1": sum(flat) / len(flat)}, step=step)
    return scores


def save_validation_images(recipe: Recipe, rows: list[list[Image.Image]], run_dir: Path, scores=()) -> list[Path]:
    """One folder per validation prompt, with each image's settings (and control F1) in its PNG: what `push` shares."""
    cfg = recipe.validation
    paths = []
    for index, (prompt, images) in enumerate(zip(cfg.prompts, rows, strict=True)):
        adapter = [f"{run_dir.name}:1"]  # the folder's name only: these images get shared, home paths should not
        settings = {"prompt": prompt, "base": recipe.base, "lora": adapter, "steps": cfg.steps, "guidance": cfg.guidance}
        per_image = None
        if recipe.controlnet:
            settings = {**settings, "lora": [], "controlnet": [adapter[0]], "control_type": [recipe.data.control.type]}
            per_image = [{"control_f1": [score]} for score in scores[index]]  # lists, as `archdiff sample` writes them
        paths += save_images(images, cfg.seeds, settings, run_dir / SAMPLES_DIR / f"prompt{index:02d}", per_image)
    return paths


def log_grid(rows: list[list], accelerator, run_dir: Path, step: int, controls=()) -> Path:
    """samples/step-NNNNNN.png, prompts down and seeds across (a ControlNet run's control first), also sent to the trackers."""
    import numpy as np

    if controls:
        rows = [[control, *row] for control, row in zip(controls, rows, strict=True)]
    sheet = grid([image for row in rows for image in row], columns=len(rows[0]))
    path = run_dir / SAMPLES_DIR / f"{checkpoint_name(step)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.asarray(sheet)[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [sheet]}, step=step)
    return path
