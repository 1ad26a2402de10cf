"""`archdiff eval RUN`: draw the held-out captions with every checkpoint and with the base, score them, report.

Every input is checked (the run, its checkpoints, the options, the output folder, the metric models, the data)
before anything is written under RUN/eval/; then the images are drawn (only those not drawn before), scored and
written as report.json + report.html with one grid per row.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from archdiff.config.schema import EvalConfig, Recipe
from archdiff.errors import UserError
from archdiff.eval.draw import DrawSettings, Row
from archdiff.eval.plan import EvalData, LazyImages, plan_jobs
from archdiff.run_files import EVAL_DIR, METRICS_FILE, RECIPE_FILE, MetricsLog, checkpoint_step
from archdiff.sample import MAX_SEED

GRIDS_DIR = "grids"
GRID_GROUPS = 4  # captions shown per row's grid (each with all its seeds)
GRID_CELL = 192  # px: tiny 64 px images are enlarged, large ones shrunk
SELECT_FALLBACK = ("fd_dino", "kid_dino", "clip_score", "control_f1")


@dataclass(frozen=True)
class EvalOptions:
    checkpoints: str = "all"
    num_images: int | None = None
    metrics: list[str] | None = None
    seeds: list[int] | None = None


@dataclass(frozen=True)
class Settings:
    num_images: int
    seeds: list[int]
    metrics: list[str]
    steps: int
    guidance: float


def read_run(run_dir: Path) -> Recipe:
    """The run's recipe, typed; a folder that is not a run is one line."""
    from pydantic import ValidationError

    from archdiff.runs import read_recipe

    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a folder; pass a run folder (what `archdiff train` wrote)")
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no {RECIPE_FILE}); pass what `archdiff train` wrote")
    try:
        return Recipe.model_validate(read_recipe(path))
    except ValidationError as error:
        problem = error.errors()[0]
        raise UserError(
            f"{path} is not a recipe this archdiff reads ({'.'.join(map(str, problem['loc']))}: {problem['msg']})"
        ) from None


def resolve_settings(recipe: Recipe, options: EvalOptions) -> Settings:
    """The recipe's `eval:` section under the command's options; what cannot apply to this run is refused by name."""
    cfg: EvalConfig = recipe.eval
    num_images = cfg.num_images if options.num_images is None else options.num_images
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1 (got {num_images})")
    seeds = list(dict.fromkeys(cfg.seeds if options.seeds is None else options.seeds))
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    if not all(0 <= seed < MAX_SEED for seed in seeds):
        raise UserError(f"seeds must be between 0 and {MAX_SEED - 1} (got {', '.join(map(str, seeds))})")
    known = list(EvalConfig.model_fields["metrics"].default_factory())
    if options.metrics is None:
        metrics = [m for m in cfg.metrics if m != "control_f1" or recipe.controlnet]
    else:
        unknown = [m for m in options.metrics if m not in known]
        if unknown:
            raise UserError(f"unknown metric {', '.join(repr(m) for m in unknown)}; choose from {', '.join(known)}")
        metrics = list(dict.fromkeys(options.metrics))
        if "control_f1" in metrics and not recipe.controlnet:
            raise UserError("control_f1 measures a ControlNet run's control adherence; this run trained no ControlNet")
        if {"diversity", "vendi"} & set(metrics) and len(seeds) < 2:
            raise UserError("diversity and vendi compare a caption's images across seeds: give 2 or more --seeds")
    if not metrics:
        raise UserError("no metric left to measure")
    return Settings(num_images, seeds, metrics, cfg.steps, cfg.guidance)


def evaluate(run_dir: Path, options: EvalOptions) -> tuple[dict[str, Any], Path]:
    """What `archdiff eval` does: the report (written to RUN/eval/report.json) and the report.html beside it."""
    from archdiff.checkpoint_loras import find_steps
    from archdiff.eval.draw import draw_missing, image_paths
    from archdiff.eval.plan import eval_data
    from archdiff.eval.scores import MetricModels
    from archdiff.model.base import resolve_base
    from archdiff.outputs import check_output

    # 1. every input, before anything is written
    recipe = read_run(run_dir)
    settings = resolve_settings(recipe, options)
    checkpoints = find_steps(run_dir, options.checkpoints)
    eval_dir = run_dir / EVAL_DIR
    check_output(eval_dir, "eval folder", folder=True)
    base = resolve_base(recipe.base, recipe.vae)  # a run's `vae:` draws its images as it drew its samples
    if recipe.controlnet:
        from archdiff.train.checks import check_controlnet_options

        check_controlnet_options(recipe, base)  # its init and style LoRA are still there and fit
    reference = eval_data(recipe)
    settings = _fit_reference(settings, len(reference.samples), reference.name, options.metrics is not None)
    models = MetricModels(recipe.eval.clip, recipe.eval.dino)
    models.load_for(set(settings.metrics))
    jobs = plan_jobs([s.bucket for s in reference.samples], reference.prompts, settings.num_images, settings.seeds)

    # 2. draw what is not drawn yet
    rows = [Row("base", None, None, f"base:{recipe.base}")] + [_checkpoint_row(c, recipe, base) for c in checkpoints]
    controls = control_ids = None
    if recipe.controlnet:
        maps = [reference.control(index) for index in range(len(reference.samples))]
        controls = [maps[job.reference] for job in jobs]
        control_ids = [hashlib.sha256(control.tobytes()).hexdigest()[:20] for control in controls]
    draw = DrawSettings(recipe.base, base.source, base.family, settings.steps, settings.guidance, recipe, controls, base.vae)
    paths = image_paths(eval_dir, rows, jobs, draw, control_ids)
    drawn, reused = draw_missing(rows, jobs, paths, draw)

    # 3. score, grids, report
    from archdiff.eval.report import write_report

    report = _report(run_dir, recipe, settings, rows, jobs, paths, reference, models, controls)
    report["drawn"], report["reused"] = drawn, reused
    _, html = write_report(eval_dir, report)
    return report, html


def _fit_reference(settings: Settings, count: int, name: str, explicit: bool) -> Settings:
    """FD and KID compare 2+ generated images with 2+ real ones: asked for by name, fewer is an error; by default they
    are left out, and that is said."""
    from dataclasses import replace

    from archdiff.eval.scores import NEEDS_REFERENCE

    wanted = [metric for metric in settings.metrics if metric in NEEDS_REFERENCE]
    drawn = math.ceil(settings.num_images / len(settings.seeds)) * len(settings.seeds)
    short = f"the run has {count} {name} image(s)" if count < 2 else f"{drawn} image is drawn per checkpoint" if drawn < 2 else ""
    if not wanted or not short:
        return settings
    left = [metric for metric in settings.metrics if metric not in NEEDS_REFERENCE]
    if explicit or not left:
        raise UserError(f"{', '.join(wanted)} compare two sets of images, and {short}: at least 2 are needed")
    print(f"archdiff: {', '.join(wanted)} left out: {short}, at least 2 are needed")
    return replace(settings, metrics=left)


def _checkpoint_row(checkpoint: Path, recipe: Recipe, base) -> Row:
    """A checkpoint's row: its UNet LoRA (a LoRA run, or a ControlNet run with unet_lora) and/or its ControlNet."""
    from archdiff.checkpoint_loras import checkpoint_lora
    from archdiff.file_digests import folder_digest

    lora = checkpoint_lora(checkpoint, base.family) if recipe.unet_lora_trains else None
    controlnet = checkpoint if recipe.controlnet else None
    return Row(checkpoint.name, checkpoint_step(checkpoint), lora, folder_digest(checkpoint), controlnet)


def _adherence(recipe: Recipe, controls, paths: list[Path]):
    """Each image's control F1 against the control it was drawn from (the base row's: without any ControlNet)."""
    from archdiff.data.controls import control_f1

    cfg = recipe.data.control

    def scores() -> list[float]:
        images = LazyImages.of_files(paths)
        return [
            control_f1(control, image, cfg.type, canny_low=cfg.canny_low, canny_high=cfg.canny_high)
            for control, image in zip(controls, images, strict=True)
        ]

    return scores


def _report(
    run_dir: Path, recipe: Recipe, settings: Settings, rows: list[Row], jobs, paths, reference: EvalData, models, controls
):
    from archdiff.eval.metrics import best_checkpoint
    from archdiff.eval.scores import HIGHER_IS_BETTER, NEEDS_REFERENCE, score_images

    metrics = set(settings.metrics)
    real_features = None
    if metrics & NEEDS_REFERENCE:
        from archdiff.eval.features import dino_features

        real_features = dino_features(models.dino(), reference.images())
    prompts, groups = [job.prompt for job in jobs], [job.group for job in jobs]
    val_losses = _val_losses(run_dir)
    eval_dir = run_dir / EVAL_DIR
    table = []
    for row in rows:
        images = LazyImages.of_files(paths[row.name])
        adherence = _adherence(recipe, controls, paths[row.name]) if controls else None
        scores = score_images(lambda images=images: images, prompts, groups, metrics, models, real_features, adherence)
        grid = _save_grid(images, jobs, len(settings.seeds), eval_dir / GRIDS_DIR / f"{row.name}.png")
        loss = val_losses.get(row.step or 0)
        table.append({"name": row.name, "step": row.step, "weights": row.weights_id, **scores, "val_loss": loss, "grid": grid})
    real = LazyImages(len(reference.samples), reference.image)
    real_scores = score_images(lambda: real, reference.prompts, [], metrics & {"clip_score", "geometry"}, models)
    reference_row = {
        "name": reference.name,
        **real_scores,
        "grid": _save_grid(real, None, len(settings.seeds), eval_dir / GRIDS_DIR / "reference.png"),
    }
    chosen = next((m for m in (recipe.eval.select, *SELECT_FALLBACK) if m in metrics), None)
    best = None
    if chosen:
        pick = best_checkpoint(table, chosen, HIGHER_IS_BETTER[chosen])
        best = {"metric": chosen, "name": pick["name"], "step": pick["step"], "value": pick[chosen], "weights": pick["weights"]}
    return {
        "run": str(run_dir),
        "recipe": recipe.name,
        "base": recipe.base,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "num_images": len(jobs),
            "seeds": settings.seeds,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "prompts": len({job.reference for job in jobs}),
            "metrics": settings.metrics,
            "reference": reference.name,
            "reference_images": len(reference.samples),
        },
        "metric_models": models.described(),
        "rows": table,
        "reference": reference_row,
        "best": best,
    }


def _val_losses(run_dir: Path) -> dict[int, float]:
    """Held-out loss by step from metrics.jsonl (step 0 is the untrained model: the base row's)."""
    rows = MetricsLog.read_if_exists(run_dir / METRICS_FILE)
    return {row["step"]: row["val_loss"] for row in rows if isinstance(row.get("val_loss"), (int, float))}


def _save_grid(images: LazyImages, jobs, seeds: int, path: Path) -> str:
    """The first GRID_GROUPS captions' images (a row of seeds each), or the first real images, fitted into square cells."""
    from PIL import Image, ImageOps

    count = min(len(images), GRID_GROUPS * seeds)
    columns = seeds if jobs is not None else min(count, max(seeds, 4))
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * GRID_CELL, rows * GRID_CELL), "white")
    for index, image in zip(range(count), images, strict=False):
        cell = ImageOps.contain(
            image, (GRID_CELL, GRID_CELL), Image.Resampling.NEAREST if image.width < GRID_CELL else Image.Resampling.LANCZOS
        )
        x, y = (index % columns) * GRID_CELL, (index // columns) * GRID_CELL
        sheet.paste(cell, (x + (GRID_CELL - cell.width) // 2, y + (GRID_CELL - cell.height) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return f"{GRIDS_DIR}/{path.name}"
