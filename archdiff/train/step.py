"""One denoising loss, shared by the training step and held-out evaluation.

A batch becomes latents and text conditioning (as its model family builds it: model/families.py), the
family's objective noises the latents, the denoiser (UNet or transformer) predicts, and the objective weighs
the error. Training draws the noise and timesteps; evaluation fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from archdiff.config.schema import Recipe
from archdiff.model.base import Components
from archdiff.model.families import Family
from archdiff.train.objective import DiffusionObjective, FlowObjective, diffusion_loss, prior_preservation_loss


@dataclass
class Denoiser:
    """What a loss needs besides the batch: the models it runs and the objective's settings."""

    unet: Any
    text_encoders: list  # the encoders the step runs: none when every caption's embedding is cached
    objective: Any  # the family's: DiffusionObjective (epsilon / v-prediction) or FlowObjective (train/objective.py)
    device: Any
    text_trains: bool = False  # gradients flow into the text encoders (lora.text_encoder)
    controlnet: Any = None  # a ControlNet run: its residuals steer the UNet from the batch's control maps
    control_scale: float = 1.0
    family: Family = field(default_factory=Family)  # how text becomes conditioning and how the denoiser is called


def prediction_type(recipe: Recipe, noise_scheduler) -> str:
    return recipe.train.prediction_type or noise_scheduler.config.prediction_type


def step_text_encoders(recipe: Recipe, components: Components) -> list:
    """The text encoders the step runs: none when every caption's embedding is cached, so they are never loaded."""
    return [] if recipe.data.cache.text else list(components.text_encoders)


def objective_for(recipe: Recipe, components: Components):
    """How noise is added and what the model predicts: the base family's objective (train/objective.py)."""
    if components.family.objective == "flow":
        return FlowObjective(components.noise_scheduler)
    return DiffusionObjective(components.noise_scheduler, prediction_type(recipe, components.noise_scheduler))


def denoiser_for(recipe: Recipe, components: Components, unet, text_encoders: list, device, controlnet=None) -> Denoiser:
    objective = objective_for(recipe, components)
    text_trains = recipe.lora.text_encoder is not None
    scale = recipe.controlnet.scale if recipe.controlnet else 1.0
    return Denoiser(unet, text_encoders, objective, device, text_trains, controlnet, scale, components.family)


def batch_latents(batch: dict, components: Components, device, sample: bool = True) -> torch.Tensor:
    """Latents from the cache's stored distribution when the batch has them; from the VAE otherwise
    (the only place a training step touches the VAE, so a cached run never loads it)."""
    if "latent_params" in batch:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(batch["latent_params"].to(device, non_blocking=True))
    else:
        vae = components.vae
        dist = vae.encode(batch["pixel_values"].to(vae.device, vae.dtype)).latent_dist
    return ((dist.sample() if sample else dist.mode()) - components.shift_factor) * components.scaling_factor


def batch_bucket(batch: dict) -> tuple[int, int]:
    """(width, height) in pixels of a collated batch, from its pixels or its cached latents."""
    if "pixel_values" in batch:
        return batch["pixel_values"].shape[-1], batch["pixel_values"].shape[-2]
    return batch["latent_params"].shape[-1] * 8, batch["latent_params"].shape[-2] * 8


def batch_conditioning(denoiser: Denoiser, batch: dict, bucket: tuple[int, int]) -> dict:
    """The denoiser's text conditioning, as its family builds it (model/families.py)."""
    return denoiser.family.conditioning(batch, denoiser.text_encoders, denoiser.device, bucket, denoiser.unet)


def control_residuals(denoiser: Denoiser, batch: dict, noisy, timesteps, conditioning: dict) -> dict:
    """The ControlNet's additions to the UNet's skip connections and middle block ({} without a ControlNet)."""
    if denoiser.controlnet is None:
        return {}
    control = batch["control_values"].to(noisy.device, non_blocking=True).float() / 255.0  # ControlNets read [0, 1]
    down, middle = denoiser.controlnet(
        noisy,
        timesteps,
        encoder_hidden_states=conditioning["encoder_hidden_states"],
        controlnet_cond=control,
        conditioning_scale=denoiser.control_scale,
        added_cond_kwargs=conditioning.get("added_cond_kwargs"),
        return_dict=False,
    )
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": middle}


def denoising_loss(
    denoiser: Denoiser,
    batch: dict,
    bucket: tuple[int, int],
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    snr_gamma: float | None = None,
    instances: int | None = None,
    prior_weight: float = 1.0,
) -> torch.Tensor:
    """The loss of one batch at the given noise and timesteps.

    `snr_gamma` weighs samples by Min-SNR (training only: val_loss stays a plain mean); `instances`
    marks a DreamBooth batch whose rest are class images, weighed by `prior_weight`. A batch's `loss_mask`
    (data/masks.py) limits each sample's error to the pixels it keeps.
    """
    objective = denoiser.objective
    with torch.set_grad_enabled(denoiser.text_trains and torch.is_grad_enabled()):
        conditioning = batch_conditioning(denoiser, batch, bucket)
    noisy = objective.noisy(latents, noise, timesteps)
    target = objective.target(latents, noise, timesteps)
    residuals = control_residuals(denoiser, batch, noisy, timesteps, conditioning)
    prediction = denoiser.family.predict(denoiser.unet, noisy, timesteps, conditioning, residuals)
    weights = objective.weights(timesteps, snr_gamma)
    masking = {"mask": batch["loss_mask"].to(prediction.device, non_blocking=True)} if "loss_mask" in batch else {}
    if instances is None:
        return diffusion_loss(prediction, target, weights, **masking)
    return prior_preservation_loss(prediction, target, weights, instances, prior_weight, **masking)
