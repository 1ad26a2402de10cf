"""Held-out evaluation: val_loss through the training step's own loss, at fixed noise and timesteps.

Every held-out image is noised at EVAL_TIMESTEPS_PER_IMAGE evenly spread timesteps with noise drawn
from the recipe's seed once, so val_loss compares across steps and across runs of the same recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from archdiff.config.schema import Recipe
from archdiff.data.samples import SampleSet, collate
from archdiff.model.base import Components
from archdiff.train.objective import sample_noise
from archdiff.train.step import Denoiser, batch_bucket, batch_latents, denoising_loss, objective_for

EVAL_TIMESTEPS_PER_IMAGE = 8
EVAL_SEED_OFFSET = 1_000_003
_ENCODED = ("pixel_values", "latent_params")  # held as latents instead: no need to keep the images


@dataclass
class EvalBatch:
    """Held-out images of one bucket, each repeated once per timestep, with their fixed latents, noise and timesteps."""

    batch: dict[str, torch.Tensor]  # the collated samples (captions as token ids or cached embeddings, SDXL sizes)
    bucket: tuple[int, int]
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


EvalSet = list[EvalBatch]


@torch.no_grad()
def build_eval_set(holdout: SampleSet | None, recipe: Recipe, components: Components, device) -> EvalSet:
    """Every held-out image at EVAL_TIMESTEPS_PER_IMAGE spread timesteps, grouped by bucket."""
    if holdout is None or len(holdout) == 0:
        return []
    by_bucket: dict = {}
    for index, sample in enumerate(holdout.samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    k = EVAL_TIMESTEPS_PER_IMAGE
    objective = objective_for(recipe, components)
    generator = torch.Generator(device="cpu").manual_seed(recipe.train.seed + EVAL_SEED_OFFSET)
    eval_set = []
    for bucket in sorted(by_bucket):
        examples = collate([holdout[i] for i in by_bucket[bucket]])
        latents = batch_latents(examples, components, device, sample=False).float().repeat_interleave(k, dim=0)
        timesteps = objective.fixed_timesteps(k).repeat(len(by_bucket[bucket])).to(device)
        noise = sample_noise(latents.cpu(), generator=generator).to(device)
        kept = {key: value.repeat_interleave(k, dim=0) for key, value in examples.items() if key not in _ENCODED}
        eval_set.append(EvalBatch(kept, batch_bucket(examples), latents, noise, timesteps))
    return eval_set


def blank_controls(eval_set: EvalSet) -> EvalSet:
    """The held-out set with every control image black: a ControlNet that uses its control does worse on it."""
    return [
        replace(group, batch={**group.batch, "control_values": torch.zeros_like(group.batch["control_values"])})
        for group in eval_set
    ]


@torch.no_grad()
def evaluate(denoiser: Denoiser, eval_set: EvalSet, *, batch_size: int, autocast: Callable = nullcontext) -> float:
    """Mean unweighted denoising loss on the held-out set, in batches no larger than training's
    (so evaluating never needs more memory than the step itself). `autocast`: the precision training runs in."""
    models = [model for model in (denoiser.unet, denoiser.controlnet) if model is not None]
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    total, count = 0.0, 0
    for group in eval_set:
        for start in range(0, len(group.timesteps), batch_size):
            window = slice(start, start + batch_size)
            batch = {key: value[window] for key, value in group.batch.items()}
            with autocast():
                loss = denoising_loss(
                    denoiser, batch, group.bucket, group.latents[window], group.noise[window], group.timesteps[window]
                )
            n = len(group.timesteps[window])
            total += loss.item() * n
            count += n
    for model, mode in zip(models, was_training, strict=True):
        model.train(mode)
    return total / count
