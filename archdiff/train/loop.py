"""The training loop: accelerate for devices, precision and gradient accumulation; the loss from `step`.

Resuming restores the adapter, optimizer, LR schedule, RNG states and the data position, so the
continuation is bit-identical to an uninterrupted run on the same machine and thread count.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import archdiff
from archdiff.config.schema import Recipe
from archdiff.data.buckets import BucketBatchSampler
from archdiff.data.samples import SampleSet, collate
from archdiff.model.base import Components
from archdiff.run_files import BLANK_CONTROL_LOSS, MetricsLog
from archdiff.train.checkpoints import TrainerState, read_state, register_adapter_hooks, save_checkpoint
from archdiff.train.evaluation import EvalSet, blank_controls, evaluate
from archdiff.train.guards import Interrupted, NanGuard, StopRequest, stop_requested
from archdiff.train.objective import sample_noise
from archdiff.train.step import batch_bucket, batch_latents, denoiser_for, denoising_loss, step_text_encoders


@dataclass
class TrainContext:
    """Everything a run hands the loop: the recipe, the loaded model, the data and where results go."""

    recipe: Recipe
    components: Components
    train_set: SampleSet
    eval_set: EvalSet
    accelerator: Any
    metrics: MetricsLog
    run_dir: Path
    resume: Path | None = None  # the checkpoint to continue from
    draw_samples: Callable[[int], None] | None = None  # progress grids every validation.every steps (main process)
    class_batches: Any = None  # DreamBooth's class images, one batch beside each instance batch
    controlnet: Any = None  # a ControlNet run's ControlNet, trained (fully or through its LoRA) instead of the UNet's LoRA
    ema: Any = None  # train.ema's AdapterEMA: updated after each step, in every checkpoint, swapped in to evaluate


@dataclass
class LoopResult:
    first_val_loss: float | None
    final_val_loss: float | None
    steps_trained: int  # in this process's run: fewer than max_steps after a resume
    startup: float = 0.0  # seconds from the process's start to the first step
    final_blank_control_loss: float | None = None  # a ControlNet run's val_loss with its controls blanked


def peak_memory_mb(device) -> float:
    """The most memory this process held so far: CUDA's allocator peak on a GPU, peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_optimizer(params, recipe: Recipe):
    cfg = recipe.train
    settings = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "weight_decay": cfg.weight_decay,
        "eps": cfg.adam_epsilon,
    }
    if recipe.memory.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **settings)
    # torch's default on CPU is a Python loop over LoRA's hundreds of small tensors; the fused kernel is ~3x faster.
    return torch.optim.AdamW(params, fused=True, **settings)


def make_loader(ctx: TrainContext) -> tuple[torch.utils.data.DataLoader, BucketBatchSampler]:
    """Batches from one bucket at a time, each process its own slice of every global batch.

    Not passed through accelerator.prepare: the bucket sampler already shards by process. Its own
    generator keeps worker seeding off the global RNG, which checkpoints restore.
    """
    cfg, accelerator = ctx.recipe.train, ctx.accelerator
    sampler = BucketBatchSampler(
        [sample.bucket for sample in ctx.train_set.samples],
        cfg.batch_size,
        cfg.seed,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    loader = torch.utils.data.DataLoader(
        ctx.train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=ctx.recipe.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=torch.device(accelerator.device).type == "cuda",  # page-locked batches copy to the GPU asynchronously
        worker_init_fn=leave_stop_signals_to_the_main_process if ctx.recipe.data.num_workers else None,
    )
    return loader, sampler


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: the main process stops after the step and then ends them.

    `timeout`, `kill -- -PGID`, SLURM and systemd signal every process of a run; a worker killed by SIGTERM
    made torch raise "DataLoader worker ... is killed by signal" in the middle of the stop's checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_lora(ctx: TrainContext) -> LoopResult:
    """Train up to `recipe.train.max_steps` optimizer steps, checkpointing as the recipe says."""
    from diffusers.optimization import get_scheduler

    recipe, accelerator, metrics = ctx.recipe, ctx.accelerator, ctx.metrics
    cfg = recipe.train
    unet, text_encoders, controlnet = ctx.components.unet, step_text_encoders(recipe, ctx.components), ctx.controlnet
    device = accelerator.device
    loader, sampler = make_loader(ctx)
    train_text = recipe.lora.text_encoder is not None
    trained = {**({"unet": [unet]} if recipe.unet_lora_trains else {}), **({"controlnet": [controlnet]} if controlnet else {})}
    groups = [{"params": [p for model in models for p in model.parameters() if p.requires_grad]} for models in trained.values()]
    if train_text:
        trained["text"] = text_encoders
        text_params = [p for encoder in text_encoders for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": text_params, "lr": recipe.lora.text_encoder.learning_rate or cfg.learning_rate})
    params = [p for group in groups for p in group["params"]]
    optimizer = make_optimizer(groups, recipe)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_steps * accelerator.num_processes,
    )
    *prepared, optimizer, lr_scheduler = accelerator.prepare(
        *(m for models in trained.values() for m in models), optimizer, lr_scheduler
    )
    for name, models in trained.items():  # the DDP-wrapped models, in the order they went in
        trained[name], prepared = prepared[: len(models)], prepared[len(models) :]
    unet = trained.get("unet", [unet])[0]
    controlnet = trained.get("controlnet", [controlnet])[0]
    text_encoders = trained.get("text", text_encoders)
    register_adapter_hooks(accelerator, trained)
    ema = ctx.ema
    averaged = ema.swapped if ema is not None else nullcontext  # validation and sample grids see the average
    if ema is not None:
        ema.register_hooks(accelerator)
    denoiser = denoiser_for(recipe, ctx.components, unet, text_encoders, device, controlnet)

    def validate() -> dict[str, float]:
        """val_loss; a ControlNet run also measures it with every control blanked: the gap is what the control is worth."""
        if not ctx.eval_set or not accelerator.is_main_process:
            return {}
        plain = [accelerator.unwrap_model(model) for model in (unet, *text_encoders)]
        plain_controlnet = accelerator.unwrap_model(controlnet) if controlnet is not None else None
        unwrapped = denoiser_for(recipe, ctx.components, plain[0], plain[1:], device, plain_controlnet)
        with averaged():
            losses = {"val_loss": evaluate(unwrapped, ctx.eval_set, batch_size=cfg.batch_size, autocast=accelerator.autocast)}
            if controlnet is not None:
                blank = blank_controls(ctx.eval_set)
                losses[BLANK_CONTROL_LOSS] = evaluate(unwrapped, blank, batch_size=cfg.batch_size, autocast=accelerator.autocast)
        return losses

    step = batches = 0
    if ctx.resume is not None:
        accelerator.load_state(str(ctx.resume))
        state = read_state(ctx.resume)
        step, batches = state.step, state.batches
        first_val_loss = next((row["val_loss"] for row in MetricsLog.read_if_exists(metrics.path) if row["step"] == 0), None)
    else:
        first = validate()
        first_val_loss = first.get("val_loss")
    startup = time.monotonic() - archdiff.STARTED
    if ctx.resume is None:
        metrics.write(step=0, loss=None, lr=lr_scheduler.get_last_lr()[0], **_losses_row(first), elapsed=0.0, startup=startup)
        if first:
            accelerator.log(first, step=0)  # the trackers' curves start from the untrained model
    if step >= cfg.max_steps:
        return LoopResult(first_val_loss, None, 0, startup)
    if accelerator.is_main_process:
        print(f"start-up: {startup:.1f} s to the first step")
    sampler.start_at(batches)

    guard = NanGuard(optimizer, device, ctx.run_dir / "checkpoints")
    recipe_dump = recipe.model_dump(mode="json")

    def checkpoint() -> Path:
        guard.check()  # a checkpoint is only ever written from finite steps
        return save_checkpoint(accelerator, ctx.run_dir, TrainerState(step, batches, recipe_dump), cfg.checkpoint_limit)

    started, start_step = time.perf_counter(), step
    running_loss, running_count = torch.zeros((), device=device), 0
    losses: dict[str, float] = {}
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    trained_models = [model for models in trained.values() for model in models]
    for model in trained_models:
        model.train()
    with StopRequest() as stop:
        try:
            for batch in loader:  # endless: the bucket sampler runs epoch after epoch
                instances = None
                if ctx.class_batches is not None:  # DreamBooth: as many class images, same bucket, one batch
                    instances = len(next(iter(batch.values())))
                    extra = collate(ctx.class_batches.batch(batch_bucket(batch), instances, batches))
                    batch = {key: torch.cat([batch[key], extra[key]]) for key in batch}
                with accelerator.accumulate(*trained_models):
                    with torch.no_grad():
                        latents = batch_latents(batch, ctx.components, device)
                    noise = sample_noise(latents, cfg.noise_offset)
                    timesteps = denoiser.objective.draw_timesteps(len(latents), latents.device)
                    prior_weight = recipe.dreambooth.prior_loss_weight if recipe.dreambooth else 1.0
                    loss = denoising_loss(
                        denoiser, batch, batch_bucket(batch), latents, noise, timesteps, cfg.snr_gamma, instances, prior_weight
                    )
                    guard.record(loss, step + 1, accelerator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                        step_lr = optimizer.param_groups[0]["lr"]  # what this update uses; the scheduler then moves on
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                batches += 1
                running_loss += loss.detach()
                running_count += 1
                if not accelerator.sync_gradients:
                    continue
                guard.step_done()
                step += 1
                if ema is not None:
                    ema.update(step)
                bar.update(1)
                last = step == cfg.max_steps
                is_val_step = step % cfg.val_every == 0 or last
                losses = validate() if is_val_step else {}
                if step % cfg.log_every == 0 or is_val_step:
                    guard.check()
                    mean_loss = accelerator.gather(running_loss).mean().item() / running_count
                    running_loss.zero_()
                    running_count = 0
                    _log(ctx, bar, step, mean_loss, step_lr, losses, time.perf_counter() - started, last)
                if ctx.draw_samples and recipe.validation.every and step % recipe.validation.every == 0 and not last:
                    guard.check()
                    with averaged():
                        ctx.draw_samples(step)
                if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint()
                if last:
                    guard.check()
                    final = losses.get("val_loss")
                    return LoopResult(first_val_loss, final, step - start_step, startup, losses.get(BLANK_CONTROL_LOSS))
                if stop_requested(stop, accelerator, step, cfg.log_every):
                    raise Interrupted(step, checkpoint(), stop.signal_number, accelerator.is_main_process)
        except KeyboardInterrupt:  # a second Ctrl-C: stop without a new checkpoint
            raise Interrupted(step, None, signal.SIGINT, accelerator.is_main_process) from None
        finally:
            bar.close()
    raise AssertionError("the bucket sampler never ends")


def _losses_row(losses: dict[str, float]) -> dict[str, float | None]:
    """Held-out losses as metrics.jsonl columns: val_loss always (null when not measured), the others when measured."""
    return {"val_loss": None, **losses}


def _log(ctx: TrainContext, bar, step: int, loss: float, lr: float, losses: dict[str, float], elapsed: float, last: bool) -> None:
    """One row of metrics.jsonl (with the peak memory at the end), the trackers and the progress bar."""
    peak = {"peak_memory_mb": round(peak_memory_mb(ctx.accelerator.device), 1)} if last else {}
    ctx.metrics.write(step=step, loss=loss, lr=lr, **_losses_row(losses), elapsed=elapsed, **peak)
    ctx.accelerator.log({"loss": loss, "lr": lr, **losses}, step=step)
    shown = {"val": f"{losses['val_loss']:.4f}"} if "val_loss" in losses else {}
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", **shown)
