"""The training loop: LoRA on the UNet, the denoising objective, accelerate for devices and precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from archdiff.config.schema import Recipe
from archdiff.data.buckets import BucketBatchSampler
from archdiff.data.samples import SampleSet, collate
from archdiff.model.base import Components
from archdiff.run_files import MetricsLog
from archdiff.train.objective import (
    add_noise,
    diffusion_loss,
    min_snr_weights,
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
    text_embeddings: torch.Tensor
    target: torch.Tensor


EvalSet = list[EvalBatch]


class Interrupted(Exception):
    """Ctrl-C during training; carries the step reached so the CLI can say what was kept."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def encode_images(vae, pixel_values: torch.Tensor, sample: bool = True) -> torch.Tensor:
    dist = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
    latents = dist.sample() if sample else dist.mode()
    return latents * vae.config.scaling_factor


def batch_latents(batch: dict, vae, scaling_factor: float, device, sample: bool = True) -> torch.Tensor:
    """Latents from the cache's stored distribution when the batch has them; from the VAE otherwise."""
    if "latent_params" not in batch:
        return encode_images(vae, batch["pixel_values"], sample)
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dist = DiagonalGaussianDistribution(batch["latent_params"].to(device))
    return (dist.sample() if sample else dist.mode()) * scaling_factor


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def batch_text(batch: dict, text_encoder, device) -> torch.Tensor:
    if "text_embeddings" in batch:
        return batch["text_embeddings"].to(device)
    return encode_text(text_encoder, batch["input_ids"])


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
        latents = batch_latents(examples, components.vae, components.scaling_factor, device, sample=False).float()
        embeddings = batch_text(examples, components.text_encoder, device)
        latents = latents.repeat_interleave(k, dim=0)
        timesteps = stratified_timesteps(k, len(alphas)).repeat(len(by_bucket[bucket])).to(device)
        noise = sample_noise(latents.cpu(), generator=generator).to(device)
        target = training_target(latents, noise, timesteps, alphas, prediction_type(recipe, components.noise_scheduler))
        noisy = add_noise(latents, noise, timesteps, alphas)
        eval_set.append(EvalBatch(noisy, timesteps, embeddings.repeat_interleave(k, dim=0), target))
    return eval_set


@torch.no_grad()
def evaluate(unet, eval_set: EvalSet, batch_size: int = 16) -> float:
    was_training = unet.training
    unet.eval()
    total, count = 0.0, 0
    dtype = next(unet.parameters()).dtype
    for group in eval_set:
        for start in range(0, len(group.timesteps), batch_size):
            window = slice(start, start + batch_size)
            prediction = unet(
                group.noisy[window].to(dtype), group.timesteps[window], group.text_embeddings[window].to(dtype)
            ).sample
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
    recipe: Recipe, components: Components, train_set: SampleSet, eval_set: EvalSet, accelerator, metrics: MetricsLog
) -> tuple[float | None, float | None]:
    """Run `recipe.train.max_steps` optimizer steps; returns the (untrained, final) val_loss, None without holdout."""
    from diffusers.optimization import get_scheduler

    cfg = recipe.train
    unet, vae, text_encoder = components.unet, components.vae, components.text_encoder
    device = accelerator.device
    alphas = components.noise_scheduler.alphas_cumprod.to(device)
    target_type = prediction_type(recipe, components.noise_scheduler)

    sampler = BucketBatchSampler(
        [sample.bucket for sample in train_set.samples],
        cfg.batch_size,
        cfg.seed,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    # Not passed through accelerator.prepare: the bucket sampler already shards by process, one bucket per step.
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, collate_fn=collate, num_workers=recipe.data.num_workers
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    def validate(step: int) -> float | None:
        if not eval_set or not accelerator.is_main_process:
            return None
        return evaluate(accelerator.unwrap_model(unet), eval_set)

    first_val_loss = validate(0)
    metrics.write(step=0, loss=None, lr=lr_scheduler.get_last_lr()[0], val_loss=first_val_loss)
    step, running_loss, running_count = 0, torch.zeros((), device=accelerator.device), 0
    bar = tqdm(total=cfg.max_steps, desc="train", unit="step", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    unet.train()
    try:
        for batch in loader:  # endless: the bucket sampler runs epoch after epoch
            with accelerator.accumulate(unet):
                with torch.no_grad():
                    latents = batch_latents(batch, vae, components.scaling_factor, device)
                    embeddings = batch_text(batch, text_encoder, device)
                noise = sample_noise(latents, cfg.noise_offset)
                timesteps = sample_timesteps(len(latents), len(alphas), latents.device)
                target = training_target(latents, noise, timesteps, alphas, target_type)
                prediction = unet(add_noise(latents, noise, timesteps, alphas), timesteps, embeddings).sample
                weights = min_snr_weights(snr(timesteps, alphas), cfg.snr_gamma, target_type) if cfg.snr_gamma else None
                loss = diffusion_loss(prediction, target, weights)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            is_val_step = step % cfg.val_every == 0 or step == cfg.max_steps
            val_loss = validate(step) if is_val_step else None
            if step % cfg.log_every == 0 or is_val_step:
                mean_loss = accelerator.gather(running_loss).mean().item() / running_count
                running_loss.zero_()
                running_count = 0
                lr = lr_scheduler.get_last_lr()[0]
                metrics.write(step=step, loss=mean_loss, lr=lr, val_loss=val_loss)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", **({"val": f"{val_loss:.4f}"} if val_loss is not None else {})
                )
            if step >= cfg.max_steps:
                return first_val_loss, val_loss
    except KeyboardInterrupt:
        raise Interrupted(step) from None
    finally:
        bar.close()
