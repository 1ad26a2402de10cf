"""One denoising loss, shared by the training step and held-out evaluation.

A batch becomes latents and text conditioning (SD 1.x/2.x: text alone; SDXL adds pooled text and
per-sample size/crop time ids), the scheduler noises the latents, the UNet predicts, and the
objective's functions weigh the error. Training draws the noise and timesteps; evaluation fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from archdiff.config.schema import Recipe
from archdiff.model.base import Components
from archdiff.train.objective import DiffusionObjective, diffusion_loss, prior_preservation_loss


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


def prediction_type(recipe: Recipe, noise_scheduler) -> str:
    return recipe.train.prediction_type or noise_scheduler.config.prediction_type


def step_text_encoders(recipe: Recipe, components: Components) -> list:
    """The text encoders the step runs: none when every caption's embedding is cached, so they are never loaded."""
    return [] if recipe.data.cache.text else list(components.text_encoders)


def objective_for(recipe: Recipe, components: Components):
    """How noise is added and what the model predicts: the base family's objective (train/objective.py)."""
    return DiffusionObjective(components.noise_scheduler, prediction_type(recipe, components.noise_scheduler))


def denoiser_for(recipe: Recipe, components: Components, unet, text_encoders: list, device, controlnet=None) -> Denoiser:
    objective = objective_for(recipe, components)
    text_trains = recipe.lora.text_encoder is not None
    scale = recipe.controlnet.scale if recipe.controlnet else 1.0
    return Denoiser(unet, text_encoders, objective, device, text_trains, controlnet, scale)


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


def batch_bucket(batch: dict) -> tuple[int, int]:
    """(width, height) in pixels of a collated batch, from its pixels or its cached latents."""
    if "pixel_values" in batch:
        return batch["pixel_values"].shape[-1], batch["pixel_values"].shape[-2]
    return batch["latent_params"].shape[-1] * 8, batch["latent_params"].shape[-2] * 8


def _device(module) -> torch.device:
    """Where a module's weights are; also for a DDP-wrapped encoder, which has no `.device`."""
    return next(module.parameters()).device


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(_device(text_encoder)), return_dict=False)[0]


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


def batch_conditioning(batch: dict, text_encoders: list, device, bucket: tuple[int, int]):
    """The UNet's text conditioning, plus SDXL's `added_cond_kwargs` (None for SD 1.x/2.x, which have none)."""
    if "text_embeddings" in batch:  # the text cache: SD 1.x/2.x's embedding, SDXL's with its pooled one beside it
        embeddings = batch["text_embeddings"].to(device, non_blocking=True)
        if "pooled_text_embeds" not in batch:
            return embeddings, None
        pooled = batch["pooled_text_embeds"].to(device, non_blocking=True)
    elif len(text_encoders) == 1:
        return encode_text(text_encoders[0], batch["input_ids"]), None
    else:
        embeddings, pooled = encode_text_sdxl(*text_encoders, batch["input_ids"], batch["input_ids_2"])
    time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], bucket)
    return embeddings, {"text_embeds": pooled, "time_ids": time_ids.to(device, embeddings.dtype)}


def control_residuals(denoiser: Denoiser, batch: dict, noisy, timesteps, embeddings, added_cond) -> dict:
    """The ControlNet's additions to the UNet's skip connections and middle block ({} without a ControlNet)."""
    if denoiser.controlnet is None:
        return {}
    control = batch["control_values"].to(noisy.device, non_blocking=True).float() / 255.0  # ControlNets read [0, 1]
    down, middle = denoiser.controlnet(
        noisy,
        timesteps,
        encoder_hidden_states=embeddings,
        controlnet_cond=control,
        conditioning_scale=denoiser.control_scale,
        added_cond_kwargs=added_cond,
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
    marks a DreamBooth batch whose rest are class images, weighed by `prior_weight`.
    """
    objective = denoiser.objective
    with torch.set_grad_enabled(denoiser.text_trains and torch.is_grad_enabled()):
        embeddings, added_cond = batch_conditioning(batch, denoiser.text_encoders, denoiser.device, bucket)
    noisy = objective.noisy(latents, noise, timesteps)
    target = objective.target(latents, noise, timesteps)
    prediction = denoiser.unet(
        noisy,
        timesteps,
        embeddings,
        added_cond_kwargs=added_cond,
        **control_residuals(denoiser, batch, noisy, timesteps, embeddings, added_cond),
    ).sample
    weights = objective.weights(timesteps, snr_gamma)
    if instances is None:
        return diffusion_loss(prediction, target, weights)
    return prior_preservation_loss(prediction, target, weights, instances, prior_weight)
