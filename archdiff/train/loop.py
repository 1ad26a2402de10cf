"""The training loop: LoRA on the UNet, the denoising objective, accelerate for devices and precision.

SD 1.x/2.x condition the UNet on text alone; SDXL adds pooled text and per-sample size/crop time ids."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import archdiff
from archdiff.config.schema import Recipe
from archdiff.data.buckets import BucketBatchSampler
from archdiff.data.samples import SampleSet, collate
from archdiff.errors import UserError
from archdiff.model.base import Components
from archdiff.run_files import MetricsLog
from archdiff.train.checkpoints import TrainerState, read_state, register_adapter_hooks, save_checkpoint
from archdiff.train.objective import (
    add_noise,
    diffusion_loss,
    min_snr_weights,
    prior_preservation_loss,
    sample_noise,
    sample_timesteps,
    snr,
    stratified_timesteps,
    training_target,
)

EVAL_TIMESTEPS_PER_IMAGE = 8
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class EvalBatch:
    """Held-out latents of one bucket with fixed noise and timesteps, so val_loss compares across steps and runs."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    text_embeddings: torch.Tensor  # from the untrained text encoder
    target: torch.Tensor
    token_ids: dict[str, torch.Tensor]  # to re-encode when the text encoders train too (empty with the text cache)
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL's pooled text and time ids; None for SD 1.x/2.x


EvalSet = list[EvalBatch]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the step in flight was finished and checkpointed before stopping."""

    def __init__(self, step: int, checkpoint: Path | None, signal_number: int, main: bool):
        super().__init__(step)
        self.step, self.checkpoint, self.signal_number, self.main = step, checkpoint, signal_number, main


class Diverged(UserError):
    """The loss became NaN or infinite: the weights are not updated with it, and the run stops."""


class NanGuard:
    """Skips an optimizer update whose loss is not finite, without a host sync in the step.

    torch's fused AdamW skips its update when `found_inf` is set (the device-side flag GradScaler
    uses), so the check stays on the device; the run stops at the next sync point (logging,
    checkpoint, samples, the end) naming the first bad step. Optimizers without that flag
    (bitsandbytes' 8-bit AdamW) are checked on the host at once.
    """

    def __init__(self, optimizer, device, checkpoints: Path):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
        self.optimizer = inner if isinstance(inner, torch.optim.AdamW) and inner.defaults.get("fused") else None
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: every step so far was finite
        self.window_bad = torch.zeros((), dtype=torch.bool, device=device)  # within one gradient-accumulation window
        self.checkpoints = checkpoints

    def record(self, loss: torch.Tensor, step: int, accelerator) -> None:
        """Note whether this micro-batch's loss (on any process) is finite; before `optimizer.step()`."""
        bad = ~torch.isfinite(loss.detach())
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad.float(), reduction="sum") > 0  # a collective, not a host sync
        self.window_bad |= bad
        self.first_bad = torch.where((self.first_bad == 0) & bad, step, self.first_bad)
        if self.optimizer is None:
            self.check(loss)
        else:
            self.optimizer.found_inf = self.window_bad.float()

    def step_done(self) -> None:
        self.window_bad = torch.zeros_like(self.window_bad)

    def check(self, loss: torch.Tensor | None = None) -> None:
        """A host sync: raise if any step so far had a non-finite loss."""
        step = int(self.first_bad)
        if step:
            said = f"the loss became {loss.item()}" if loss is not None else "the loss became nan or inf"
            raise Diverged(
                f"{said} at step {step}; nothing from that step was applied. "
                "Lower train.learning_rate or use mixed_precision bf16 (fp16 overflows); "
                f"the last checkpoint is in {self.checkpoints}"
            )


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: the main process stops after the step and then ends them.

    `timeout`, `kill -- -PGID`, SLURM and systemd signal every process of a run; a worker killed by SIGTERM
    made torch raise "DataLoader worker ... is killed by signal" in the middle of the stop's checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopRequest:
    """SIGINT/SIGTERM handlers that ask the loop to stop after the current step instead of dying mid-step."""

    def __init__(self):
        self.signal_number = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._request)
        return self

    def _request(self, number, frame):
        if self.signal_number:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signal_number = number

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass
class LoopResult:
    first_val_loss: float | None
    final_val_loss: float | None
    steps_trained: int  # in this process's run: fewer than max_steps after a resume
    startup: float = 0.0  # seconds from the process's start to the first step


def peak_memory_mb(device) -> float:
    """The most memory this process held so far: CUDA's allocator peak on a GPU, peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch_latents(batch: dict, components: Components, device, sample: bool = True) -> torch.Tensor:
    """Latents from the cache's stored distribution when the batch has them; from the VAE otherwise
    (the only place a training step touches the VAE, so a cached run never loads it)."""
    if "latent_params" in batch:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(batch["latent_params"].to(device, non_blocking=True))
    else:
        vae = components.vae
        dist = vae.encode(batch["pixel_values"].to(vae.device, vae.dtype)).latent_dist
    return (dist.sample() if sample else dist.mode()) * components.scaling_factor


def _device(module) -> torch.device:
    """Where a module's weights are; also for a DDP-wrapped encoder, which has no `.device`."""
    return next(module.parameters()).device


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(_device(text_encoder)), return_dict=False)[0]


def batch_bucket(batch: dict) -> tuple[int, int]:
    """(width, height) in pixels of a collated batch, from its pixels or its cached latents."""
    if "pixel_values" in batch:
        return batch["pixel_values"].shape[-1], batch["pixel_values"].shape[-2]
    return batch["latent_params"].shape[-1] * 8, batch["latent_params"].shape[-2] * 8


def sdxl_time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, bucket: tuple[int, int]) -> torch.Tensor:
    """Per sample (original h, w, crop top, left, target h, w): SDXL is told each image's size and crop, so
    upscaled or cropped training images do not teach it to draw blurry or cut-off buildings."""
    width, height = bucket
    target = torch.tensor([height, width], dtype=original_size.dtype).expand(len(original_size), 2)
    return torch.cat([original_size, crop_top_left, target], dim=1)


def encode_text_sdxl(text_encoder, text_encoder_2, input_ids: torch.Tensor, input_ids_2: torch.Tensor):
    """As SDXL's pipeline encodes a prompt: both encoders' penultimate states side by side, and the second's pooled projection."""
    first = text_encoder(input_ids.to(_device(text_encoder)), output_hidden_states=True)
    second = text_encoder_2(input_ids_2.to(_device(text_encoder_2)), output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def encode_prompts(text_encoders: list, token_ids: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(text conditioning, SDXL's pooled text or None) from token ids, with one or two text encoders."""
    if len(text_encoders) == 1:
        return encode_text(text_encoders[0], token_ids["input_ids"]), None
    return encode_text_sdxl(text_encoders[0], text_encoders[1], token_ids["input_ids"], token_ids["input_ids_2"])


def batch_conditioning(batch: dict, text_encoders: list, device):
    """The UNet's text conditioning, plus SDXL's `added_cond_kwargs` (None for SD 1.x/2.x, which have none)."""
    if "text_embeddings" in batch:  # the text cache (SD 1.x/2.x)
        return batch["text_embeddings"].to(device, non_blocking=True), None
    embeddings, pooled = encode_prompts(text_encoders, batch)
    if pooled is None:
        return embeddings, None
    time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch_bucket(batch))
    return embeddings, {"text_embeds": pooled, "time_ids": time_ids.to(device, embeddings.dtype)}


def step_text_encoders(recipe: Recipe, components: Components) -> list:
    """The text encoders the step runs: none when every caption's embedding is cached, so they are never loaded."""
    return [] if recipe.data.cache.text else list(components.text_encoders)


def prediction_type(recipe: Recipe, noise_scheduler) -> str:
    return recipe.train.prediction_type or noise_scheduler.config.prediction_type


@torch.no_grad()
def build_eval_set(holdout: SampleSet | None, recipe: Recipe, components: Components, device) -> EvalSet:
    """Every held-out image at EVAL_TIMESTEPS_PER_IMAGE spread timesteps, grouped by bucket."""
    if holdout is None or len(holdout) == 0:
        return []
    by_bucket: dict = {}
    for index, sample in enumerate(holdout.samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    k = EVAL_TIMESTEPS_PER_IMAGE
    alphas = components.noise_scheduler.alphas_cumprod.to(device)
    generator = torch.Generator(device="cpu").manual_seed(recipe.train.seed + EVAL_SEED_OFFSET)
    eval_set = []
    for bucket in sorted(by_bucket):
        examples = collate([holdout[i] for i in by_bucket[bucket]])
        latents = batch_latents(examples, components, device, sample=False).float()
        embeddings, added = batch_conditioning(examples, step_text_encoders(recipe, components), device)
        latents = latents.repeat_interleave(k, dim=0)
        timesteps = stratified_timesteps(k, len(alphas)).repeat(len(by_bucket[bucket])).to(device)
        noise = sample_noise(latents.cpu(), generator=generator).to(device)
        target = training_target(latents, noise, timesteps, alphas, prediction_type(recipe, components.noise_scheduler))
        noisy = add_noise(latents, noise, timesteps, alphas)
        token_ids = {key: examples[key].repeat_interleave(k, dim=0) for key in ("input_ids", "input_ids_2") if key in examples}
        if added is not None:
            added = {key: value.repeat_interleave(k, dim=0) for key, value in added.items()}
        eval_set.append(EvalBatch(noisy, timesteps, embeddings.repeat_interleave(k, dim=0), target, token_ids, added))
    return eval_set


@torch.no_grad()
def evaluate(unet, eval_set: EvalSet, text_encoders: list | None = None, *, batch_size: int) -> float:
    """Mean denoising loss on the held-out set; pass the text encoders when they train, so their change counts.

    Batches are no larger than training's, so evaluating never needs more memory than the step itself.
    """
    was_training = unet.training
    unet.eval()
    total, count = 0.0, 0
    dtype = next(unet.parameters()).dtype
    for group in eval_set:
        for start in range(0, len(group.timesteps), batch_size):
            window = slice(start, start + batch_size)
            added = {key: value[window].to(dtype) for key, value in group.added_cond.items()} if group.added_cond else None
            if text_encoders is None:
                embeddings = group.text_embeddings[window]
            else:
                embeddings, pooled = encode_prompts(text_encoders, {key: ids[window] for key, ids in group.token_ids.items()})
                if pooled is not None:
                    added["text_embeds"] = pooled.to(dtype)
            noisy = group.noisy[window].to(dtype)
            prediction = unet(noisy, group.timesteps[window], embeddings.to(dtype), added_cond_kwargs=added).sample
            n = len(group.timesteps[window])
            total += diffusion_loss(prediction, group.target[window]).item() * n
            count += n
    unet.train(was_training)
    return total / count


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


def train_lora(
    recipe: Recipe,
    components: Components,
    train_set: SampleSet,
    eval_set: EvalSet,
    accelerator,
    metrics: MetricsLog,
    run_dir: Path,
    resume: Path | None = None,
    draw_samples: Callable[[int], None] | None = None,
    class_batches=None,
) -> LoopResult:
    """Train up to `recipe.train.max_steps` optimizer steps, checkpointing as the recipe says.

    Resuming restores the adapter, optimizer, LR schedule, RNG states and the data position, so the
    continuation is bit-identical to an uninterrupted run on the same machine and thread count.
    """
    from diffusers.optimization import get_scheduler

    cfg = recipe.train
    unet, text_encoders = components.unet, step_text_encoders(recipe, components)
    device = accelerator.device
    alphas = components.noise_scheduler.alphas_cumprod.to(device)
    target_type = prediction_type(recipe, components.noise_scheduler)
    recipe_dump = recipe.model_dump(mode="json")

    sampler = BucketBatchSampler(
        [sample.bucket for sample in train_set.samples],
        cfg.batch_size,
        cfg.seed,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    # Not passed through accelerator.prepare: the bucket sampler already shards by process, one bucket per step.
    # Its own generator keeps worker seeding off the global RNG, which checkpoints restore.
    loader_generator = torch.Generator().manual_seed(cfg.seed)
    workers = recipe.data.num_workers
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        generator=loader_generator,
        pin_memory=torch.device(device).type == "cuda",  # page-locked batches copy to the GPU asynchronously
        worker_init_fn=leave_stop_signals_to_the_main_process if workers else None,
    )
    train_text = recipe.lora.text_encoder is not None
    params = [p for p in unet.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if train_text:
        text_params = [p for encoder in text_encoders for p in encoder.parameters() if p.requires_grad]
        groups.append({"params": text_params, "lr": recipe.lora.text_encoder.learning_rate or cfg.learning_rate})
        params = params + text_params
    optimizer = make_optimizer(groups, recipe)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_steps * accelerator.num_processes,
    )
    if train_text:
        unet, *text_encoders, optimizer, lr_scheduler = accelerator.prepare(unet, *text_encoders, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    trained = [unet, *text_encoders] if train_text else [unet]
    register_adapter_hooks(accelerator, unet, text_encoders if train_text else [])

    def validate() -> float | None:
        if not eval_set or not accelerator.is_main_process:
            return None
        encoders = [accelerator.unwrap_model(encoder) for encoder in text_encoders] if train_text else None
        return evaluate(accelerator.unwrap_model(unet), eval_set, encoders, batch_size=cfg.batch_size)

    step = batches = 0
    first_val_loss = None
    if resume is not None:
        accelerator.load_state(str(resume))
        state = read_state(resume)
        step, batches = state.step, state.batches
        first_val_loss = next((row["val_loss"] for row in MetricsLog.read_if_exists(metrics.path) if row["step"] == 0), None)
    else:
        first_val_loss = validate()
    startup = time.monotonic() - archdiff.STARTED
    if resume is None:
        metrics.write(step=0, loss=None, lr=lr_scheduler.get_last_lr()[0], val_loss=first_val_loss, elapsed=0.0, startup=startup)
    if step >= cfg.max_steps:
        return LoopResult(first_val_loss, None, 0, startup)
    if accelerator.is_main_process:
        print(f"start-up: {startup:.1f} s to the first step")
    sampler.start_at(batches)

    guard = NanGuard(optimizer, device, run_dir / "checkpoints")

    def checkpoint() -> Path:
        guard.check()  # a checkpoint is only ever written from finite steps
        return save_checkpoint(accelerator, run_dir, TrainerState(step, batches, recipe_dump), cfg.checkpoint_limit)

    started, start_step = time.perf_counter(), step
    running_loss, running_count = torch.zeros((), device=device), 0
    val_loss = None
    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    for model in trained:
        model.train()
    with StopRequest() as stop:
        try:
            for batch in loader:  # endless: the bucket sampler runs epoch after epoch
                instances = len(next(iter(batch.values())))
                if class_batches is not None:  # DreamBooth: as many class images, same bucket, one batch
                    extra = collate(class_batches.batch(batch_bucket(batch), instances, batches))
                    batch = {key: torch.cat([batch[key], extra[key]]) for key in batch}
                with accelerator.accumulate(*trained):
                    with torch.no_grad():
                        latents = batch_latents(batch, components, device)
                    with torch.set_grad_enabled(train_text):
                        embeddings, added_cond = batch_conditioning(batch, text_encoders, device)
                    noise = sample_noise(latents, cfg.noise_offset)
                    timesteps = sample_timesteps(len(latents), len(alphas), latents.device)
                    target = training_target(latents, noise, timesteps, alphas, target_type)
                    noisy = add_noise(latents, noise, timesteps, alphas)
                    prediction = unet(noisy, timesteps, embeddings, added_cond_kwargs=added_cond).sample
                    weights = min_snr_weights(snr(timesteps, alphas), cfg.snr_gamma, target_type) if cfg.snr_gamma else None
                    if class_batches is None:
                        loss = diffusion_loss(prediction, target, weights)
                    else:
                        loss = prior_preservation_loss(
                            prediction, target, weights, instances, recipe.dreambooth.prior_loss_weight
                        )
                    guard.record(loss, step + 1, accelerator)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
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
                bar.update(1)
                last = step == cfg.max_steps
                is_val_step = step % cfg.val_every == 0 or last
                val_loss = validate() if is_val_step else None
                if step % cfg.log_every == 0 or is_val_step:
                    guard.check()
                    mean_loss = accelerator.gather(running_loss).mean().item() / running_count
                    running_loss.zero_()
                    running_count = 0
                    lr = lr_scheduler.get_last_lr()[0]
                    peak = {"peak_memory_mb": round(peak_memory_mb(device), 1)} if last else {}
                    metrics.write(
                        step=step, loss=mean_loss, lr=lr, val_loss=val_loss, elapsed=time.perf_counter() - started, **peak
                    )
                    accelerator.log(
                        {"loss": mean_loss, "lr": lr, **({"val_loss": val_loss} if val_loss is not None else {})}, step=step
                    )
                    bar.set_postfix(
                        loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", **({"val": f"{val_loss:.4f}"} if val_loss is not None else {})
                    )
                if draw_samples and recipe.validation.every and step % recipe.validation.every == 0 and not last:
                    guard.check()
                    draw_samples(step)
                if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    checkpoint()
                if last:
                    guard.check()
                    return LoopResult(first_val_loss, val_loss, step - start_step, startup)
                if _stop_requested(stop, accelerator, step, cfg.log_every):
                    raise Interrupted(step, checkpoint(), stop.signal_number, accelerator.is_main_process)
        except KeyboardInterrupt:  # a second Ctrl-C: stop without a new checkpoint
            raise Interrupted(step, None, signal.SIGINT, accelerator.is_main_process) from None
        finally:
            bar.close()
    raise AssertionError("the bucket sampler never ends")


def _stop_requested(stop: StopRequest, accelerator, step: int, every: int) -> bool:
    """Every process stops at the same step when any of them was signalled.

    Agreeing on that takes a collective and a host sync, so several processes only ask every `every` steps
    (the logging interval, which syncs anyway); a signal then takes up to that many steps to stop the run.
    """
    if accelerator.num_processes == 1:
        return stop.signal_number != 0
    if step % every:
        return False
    running = accelerator.gather(torch.tensor([stop.signal_number == 0], device=accelerator.device))
    return not bool(running.all())
