"""`run(recipe)`: the whole pipeline in stage order, top to bottom.

resolve recipe inputs -> load data -> load model + attach LoRA -> train -> save -> sample.
Every input is checked before the output folder is touched, so a bad input destroys nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from archdiff.config import Recipe, dump_recipe
from archdiff.errors import UserError, first_line
from archdiff.outputs import check_output
from archdiff.run_files import (
    CONTROLNET_DIR,
    DATA_FILE,
    LOGS_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    MetricsLog,
    claim_run_dir,
    refuse_earlier_run,
    save_error_reason,
    save_errors,
    write_text_atomic,
)
from archdiff.train.checkpoints import (
    AlreadyFinished,
    check_resumable,
    checkpoint_name,
    find_checkpoint,
)
from archdiff.train.checks import check_cache_options, check_controlnet_options, check_family_options, check_trackers
from archdiff.train.dreambooth import ClassBatches, class_data, class_targets, ensure_class_images, instance_data


@dataclass
class RunResult:
    run_dir: Path
    lora_file: Path | None  # the LoRA, or a ControlNet run's RUN/controlnet; None on ranks other than 0, which write nothing
    first_val_loss: float | None
    final_val_loss: float | None
    steps_per_second: float
    sample_files: list[Path]
    steps_trained: int  # by this call: fewer than max_steps when resumed
    processes: int = 1
    ranks_agree: bool = True  # every process ended with the same LoRA weights
    main: bool = True  # the process that writes files and reports
    final_blank_control_loss: float | None = None  # a ControlNet run's held-out loss with its controls blanked


def run(recipe: Recipe, overwrite: bool = False, resume: str | None = None) -> RunResult:
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from transformers.utils import logging as transformers_logging

    from archdiff.data.cache import build_caches
    from archdiff.data.catalog import build_catalog, split_holdout
    from archdiff.data.samples import SampleSet, data_summary, expand_samples
    from archdiff.model.base import resolve_base
    from archdiff.model.memory import apply_memory_options, check_memory_options
    from archdiff.train.ema import build_ema, check_ema_options, save_raw_then_average
    from archdiff.train.evaluation import build_eval_set
    from archdiff.train.guards import Interrupted
    from archdiff.train.loop import TrainContext, train_lora
    from archdiff.train.step import objective_for
    from archdiff.train.validation import validation_controls
    from archdiff.train.validation_metrics import GridScorer, load_metric_models

    # 1. inputs: every check that can fail on user input, before anything is written
    cuda = torch.cuda.is_available()
    check_memory_options(recipe.memory, cuda)
    check_trackers(recipe)
    base = resolve_base(recipe.base, recipe.vae)  # a local base's (and vae:'s) configs and weight files are checked here
    check_family_options(recipe, base.family)
    check_cache_options(recipe)
    check_ema_options(recipe)
    controlnet_init = check_controlnet_options(recipe, base)
    data = instance_data(recipe.data, recipe.dreambooth) if recipe.dreambooth else recipe.data
    with PartialState(cpu=not cuda).main_process_first():  # DDP: rank 0 scans, the others read its scan cache
        catalog = build_catalog(data, controls=recipe.controlnet is not None, keep_covers=data.cache.latents)
    train_records, holdout_records = split_holdout(catalog.records, data.holdout, data.holdout_group, recipe.train.seed)
    train_samples = expand_samples(train_records, data, train=True)
    holdout_samples = expand_samples(holdout_records, data, train=False)
    run_dir = Path(recipe.output)
    check_output(run_dir, "output", folder=True)
    checkpoint, passed_over, missing = None, [], []
    if resume:
        checkpoint, state, passed_over = find_checkpoint(resume, run_dir)
        check_resumable(state, recipe.model_dump(mode="json"), checkpoint)
        if state.step >= recipe.train.max_steps:
            missing = missing_final_outputs(recipe, run_dir)
            if not missing:
                raise AlreadyFinished(
                    f"{run_dir} already finished at step {state.step} of {recipe.train.max_steps}: nothing to train"
                )
    else:
        refuse_earlier_run(run_dir, overwrite)

    accelerator = Accelerator(
        mixed_precision=recipe.memory.mixed_precision,
        gradient_accumulation_steps=recipe.train.gradient_accumulation,
        cpu=not cuda,
        log_with=list(recipe.train.trackers) or None,
        project_dir=str(run_dir / LOGS_DIR),
    )
    main = accelerator.is_main_process
    metric_models = load_metric_models(recipe) if main else None  # validation.metrics' models, once: a bad one stops here

    # 2. model: frozen base in the training dtype, trainable LoRA in fp32; loaded (and the LoRA attached)
    # before the output folder is touched, so a damaged base or a LoRA that matches nothing destroys nothing
    set_seed(recipe.train.seed)
    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would sit above an error's one line
    components, controlnet = _trainable_models(recipe, base, controlnet_init, accelerator.device)

    metrics = MetricsLog(run_dir / METRICS_FILE if main else None)
    score = GridScorer(recipe, metric_models, accelerator, metrics)
    if main:
        for line in passed_over:
            print(f"archdiff: passed over a damaged checkpoint: {line}")
        action = f"resuming '{recipe.name}' from {checkpoint}" if checkpoint else f"training '{recipe.name}'"
        print(f"archdiff: {action} on {recipe.base} -> {run_dir}")
        if missing:
            print(f"archdiff: {run_dir} finished at step {state.step} without its {', '.join(missing)}: writing them now")
        summary = data_summary(catalog, train_samples, holdout_samples)
        print(summary)
        if checkpoint:
            run_dir.mkdir(parents=True, exist_ok=True)  # resuming another run's checkpoint into a new folder
            metrics.keep_until(state.step)
        else:
            claim_run_dir(run_dir)
        write_text_atomic(run_dir / RECIPE_FILE, dump_recipe(recipe))
        write_text_atomic(run_dir / DATA_FILE, summary + "\n")
        (run_dir / LOGS_DIR).mkdir(exist_ok=True)
    # The recipe as the run's hyperparameters; wandb writes into the run folder (by default it uses ./wandb).
    accelerator.init_trackers(recipe.name, tracker_config(recipe), init_kwargs={"wandb": {"dir": str(run_dir / LOGS_DIR)}})
    class_set = None
    if recipe.dreambooth and recipe.dreambooth.class_prompt:
        class_set = _class_set(recipe, data, train_samples, base.source, components, accelerator, run_dir)
    apply_memory_options(components.unet, recipe.memory)  # after the class images, drawn by the plain UNet
    if controlnet is not None and recipe.memory.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    if main:
        objective = objective_for(recipe, components)
        origin = "the recipe" if recipe.train.prediction_type else "the base's scheduler"
        print(
            f"target: {objective.prediction_type} (from {'the base family' if objective.prediction_type == 'flow' else origin})"
        )

    # 3. data as the model sees it, encoded once into the caches when the recipe asks
    seed = recipe.train.seed
    tokenizer_2 = components.tokenizer_2
    paired = controlnet is not None
    both = {"tokenizer_2": tokenizer_2, "controls": paired, "tokenizer_3": components.tokenizer_3}
    train_set = SampleSet(catalog, train_samples, data, components.tokenizer, seed, train=True, **both)
    holdout_set = SampleSet(catalog, holdout_samples, data, components.tokenizer, seed, train=False, **both)
    sets = [train_set, holdout_set, *([class_set] if class_set else [])]
    if data.cache.latents or data.cache.text:
        with accelerator.main_process_first():
            caches = build_caches(sets, data.cache.latents, data.cache.text, components)
        if main:
            print(caches.report())

    # 4. train
    eval_set = build_eval_set(holdout_set, recipe, components, accelerator.device) if main else []
    controls = validation_controls(recipe, holdout_set if holdout_samples else train_set) if paired and main else []
    draw = None
    if main:
        draw = partial(_progress_grid, recipe, base.source, components, controlnet, controls, accelerator, run_dir, score)
    trained_text = components.trainable_text_encoders if recipe.lora.text_encoder else ()  # frozen ones may never load
    class_batches = ClassBatches(class_set, seed, accelerator.process_index) if class_set else None
    ema = build_ema(recipe, components.unet, trained_text)
    context = TrainContext(
        recipe, components, train_set, eval_set, accelerator, metrics, run_dir, checkpoint, draw, class_batches, controlnet, ema
    )
    started = time.perf_counter()
    try:
        result = train_lora(context)
    except Interrupted:
        if main:
            save_raw_then_average(ema, components.unet, recipe, run_dir, trained_text, components.family)
            save_run_models(components.unet, controlnet, recipe, base, run_dir, trained_text, components.family)
        accelerator.end_training()
        raise
    elapsed = time.perf_counter() - started
    trained = [*([components.unet] if recipe.unet_lora_trains else []), *([controlnet] if paired else []), *trained_text]
    ranks_agree = _ranks_agree(accelerator, trained)

    # 5. save and sample
    unet = accelerator.unwrap_model(components.unet)
    controlnet = accelerator.unwrap_model(controlnet) if paired else None
    if main:
        save_raw_then_average(ema, unet, recipe, run_dir, trained_text, components.family)  # samples use the average too
    lora_file = save_run_models(unet, controlnet, recipe, base, run_dir, trained_text, components.family) if main else None
    samples = []
    if main:
        samples = _final_samples(recipe, base.source, components, unet, controlnet, controls, run_dir, accelerator, score)
    accelerator.end_training()
    return RunResult(
        run_dir,
        lora_file,
        result.first_val_loss,
        result.final_val_loss,
        result.steps_trained / elapsed,
        samples,
        result.steps_trained,
        accelerator.num_processes,
        ranks_agree,
        main,
        result.final_blank_control_loss,
    )


def _text_encoders(components, base_name: str) -> tuple:
    """The text encoders lora.text_encoder trains, which load on first use: a damaged file's library error becomes one
    line naming the base."""
    try:
        return components.trainable_text_encoders
    except Exception as error:  # noqa: BLE001 - json, safetensors, torch and transformers errors alike
        raise UserError(f"base '{base_name}' could not be loaded: {first_line(error)}") from None


def missing_final_outputs(recipe: Recipe, run_dir: Path) -> list[str]:
    """What a finished run writes after its last checkpoint and does not have (it was killed in between)."""
    from archdiff.run_files import LORA_WEIGHTS, kohya_run_file
    from archdiff.train.ema import RAW_LORA_WEIGHTS

    files = [run_dir / LORA_WEIGHTS, kohya_run_file(run_dir, recipe.name)] if recipe.unet_lora_trains else []
    files += [run_dir / RAW_LORA_WEIGHTS] if recipe.train.ema else []
    if recipe.validation.prompts:
        files.append(run_dir / SAMPLES_DIR / f"{checkpoint_name(recipe.train.max_steps)}.png")
    wanted = {path.name: path for path in files}
    if recipe.controlnet:
        wanted[f"{CONTROLNET_DIR}/"] = run_dir / CONTROLNET_DIR / "config.json"
    return [label for label, path in wanted.items() if not path.is_file()]


def _trainable_models(recipe: Recipe, base, controlnet_init, device):
    """The base's parts, frozen in the training dtype, with what trains attached in fp32: the UNet's (and text
    encoders') LoRA, or a ControlNet (built from the plain UNet, before any adapter). Loaded before the output
    folder is touched, so a damaged base or a LoRA that matches nothing destroys nothing."""
    import torch
    from diffusers.training_utils import cast_training_params

    from archdiff.model.base import load_components
    from archdiff.model.controlnet import load_controlnet
    from archdiff.model.lora import attach_lora, attach_text_encoder_lora, merge_frozen_lora
    from archdiff.model.memory import weight_dtype

    components = load_components(base, t5=recipe.memory.t5 == "keep")
    dtype = weight_dtype(recipe.memory)
    components.place(device, dtype)
    controlnet = None
    if recipe.controlnet:
        if recipe.controlnet.style_lora:
            merge_frozen_lora(components.unet, recipe.controlnet.style_lora, base)
        controlnet = load_controlnet(recipe.controlnet, components.unet, controlnet_init).to(device, dtype=dtype)
        cast_training_params(controlnet, dtype=torch.float32)
    if recipe.unet_lora_trains:
        attach_lora(components.unet, recipe.lora)
        cast_training_params(components.unet, dtype=torch.float32)
    if recipe.lora.text_encoder:
        for encoder in _text_encoders(components, recipe.base):
            attach_text_encoder_lora(encoder, recipe.lora.text_encoder)
            cast_training_params(encoder, dtype=torch.float32)
    return components, controlnet


def save_run_models(unet, controlnet, recipe: Recipe, base, run_dir: Path, text_encoders, family) -> Path:
    """What the run trained: the ControlNet in diffusers' format and/or the UNet's LoRA (with its kohya twin).

    Returns the main one: RUN/controlnet for a ControlNet run, else the LoRA file.
    """
    from archdiff.model.base import stored_dtype
    from archdiff.model.controlnet import save_controlnet

    lora_file = save_run_lora(unet, recipe, base, run_dir, text_encoders, family) if recipe.unet_lora_trains else None
    if controlnet is None:
        return lora_file
    return save_controlnet(controlnet, run_dir, stored_dtype(base.source))


def save_run_lora(unet, recipe: Recipe, base, run_dir: Path, text_encoders, family) -> Path:
    """The diffusers LoRA, then the kohya file beside it that ComfyUI and A1111 load completely (the same
    bytes `archdiff export --format kohya` writes); SD 3.5 has no kohya layout its loaders read, so none."""
    from archdiff.export import write_run_kohya
    from archdiff.model.lora import save_lora

    lora_file = save_lora(unet, recipe.lora, run_dir, text_encoders, family)
    if family.kohya is None:
        return lora_file
    try:
        write_run_kohya(run_dir, base)
    except save_errors() as error:
        raise UserError(f"could not save the kohya LoRA beside {lora_file}: {save_error_reason(error)}") from None
    return lora_file


def _ranks_agree(accelerator, models) -> bool:
    """DDP keeps replicas in lockstep; compare every trainable value across processes to prove it."""
    import torch

    flat = torch.cat([p.detach().flatten().float() for model in models for p in model.parameters() if p.requires_grad])
    gathered = accelerator.gather(flat[None])
    return bool((gathered == gathered[0]).all())


def _class_set(recipe: Recipe, data, train_samples, source: str, components, accelerator, run_dir: Path):
    """DreamBooth's class images, drawn by the untouched base (main process first, the others reuse them)."""
    from diffusers.training_utils import free_memory

    from archdiff.data.catalog import build_catalog
    from archdiff.data.samples import SampleSet, expand_samples
    from archdiff.train.validation import training_pipeline

    targets = class_targets([s.bucket for s in train_samples], recipe.dreambooth.class_images, recipe.train.batch_size)
    components.unet.disable_adapters()  # the untouched base draws them (the new LoRA is already attached)
    with accelerator.main_process_first(), accelerator.autocast():
        pipe = training_pipeline(source, components, components.unet)
        drawn = ensure_class_images(recipe.dreambooth, targets, pipe, _drawing_fingerprint(components))
    del pipe
    components.unet.enable_adapters()
    free_memory()  # the class images are on disk: the pipeline's activations would only crowd training
    class_cfg = class_data(data, drawn.folder)
    class_catalog = build_catalog(class_cfg)
    if accelerator.is_main_process:
        print(drawn.report())
        subjects = ", ".join(sorted({s.record.name for s in train_samples}))
        lines = [f"instance prompt: {recipe.dreambooth.instance_prompt}", f"subject images: {subjects}", drawn.report()]
        lines.append(f"class prompt: {recipe.dreambooth.class_prompt}")
        with (run_dir / DATA_FILE).open("a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    samples = expand_samples(class_catalog.records, class_cfg, train=True)
    seed, tokenizer_2 = recipe.train.seed, components.tokenizer_2  # SDXL: class batches carry both encoders' tokens
    return SampleSet(class_catalog, samples, class_cfg, components.tokenizer, seed, train=True, tokenizer_2=tokenizer_2)


def _drawing_fingerprint(components) -> str:
    """What keys the class images: the UNet's files, and a recipe's `vae:` (which decodes them) when it names one."""
    unet = components.fingerprint("unet")
    return f"{unet}|{components.fingerprint('vae')}" if components.vae_folder else unet


def tracker_config(recipe: Recipe) -> dict:
    """The recipe flattened to dotted keys with scalar values, the form TensorBoard's hparams and wandb's config take."""
    import json

    from archdiff.train.checkpoints import flatten

    scalar = (bool, int, float, str)
    return {
        key: value if isinstance(value, scalar) else json.dumps(value)
        for key, value in flatten(recipe.model_dump(mode="json")).items()
    }


def _progress_grid(
    recipe: Recipe, source: str, components, controlnet, controls, accelerator, run_dir: Path, score, step: int
) -> None:
    """A grid of the validation prompts during training, scored by `score` (a GridScorer); the models go back to training."""
    from archdiff.train.validation import log_adherence, log_grid, validation_rows

    if recipe.validation.prompts:
        unet = accelerator.unwrap_model(components.unet)
        controlnet = accelerator.unwrap_model(controlnet) if controlnet is not None else None
        rows = validation_rows(recipe, source, components, unet, accelerator.autocast, controlnet, controls)
        log_grid(rows, accelerator, run_dir, step, controls)
        log_adherence(recipe, rows, controls, accelerator, step)
        score(rows, step)


def _final_samples(
    recipe: Recipe, source: str, components, unet, controlnet, controls, run_dir: Path, accelerator, score
) -> list[Path]:
    """The validation prompts drawn with the trained models: one folder per prompt and the final grid, scored by `score`."""
    from archdiff.train.validation import log_adherence, log_grid, save_validation_images, validation_rows

    if not recipe.validation.prompts:
        return []
    rows = validation_rows(recipe, source, components, unet, accelerator.autocast, controlnet, controls)
    grid_path = log_grid(rows, accelerator, run_dir, recipe.train.max_steps, controls)
    scores = log_adherence(recipe, rows, controls, accelerator, recipe.train.max_steps)
    score(rows, recipe.train.max_steps)
    return [*save_validation_images(recipe, rows, run_dir, scores), grid_path]
