"""The denoising objective as small pure functions: noise, timesteps, targets, SNR weights, loss.

Each takes tensors (and a generator where it draws) and returns tensors, so each is tested alone.
Forward noising, the velocity and the SNR are the scheduler's own (`add_noise`, `get_velocity`,
diffusers' `compute_snr`); the tests check them against the formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_noise(latents: torch.Tensor, noise_offset: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise like `latents`; `noise_offset` adds a per-channel constant shift (better dark/bright images)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        shift = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * shift
    return noise


def sample_timesteps(batch_size: int, num_train_timesteps: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform integer timesteps in [0, num_train_timesteps)."""
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device).long()


def stratified_timesteps(count: int, num_train_timesteps: int) -> torch.Tensor:
    """`count` timesteps at the centres of equal strata: a fixed, even cover for held-out evaluation."""
    centres = (torch.arange(count, dtype=torch.float64) + 0.5) * num_train_timesteps / count
    return centres.long().clamp_(0, num_train_timesteps - 1)


def training_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the UNet should output: the noise (epsilon) or the scheduler's velocity v = sqrt(a) eps - sqrt(1 - a) x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def min_snr_weights(snr_values: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon,
    min(SNR, gamma) / (SNR + 1) for v-prediction, whose loss already carries a factor SNR + 1."""
    clipped = torch.clamp(snr_values, max=gamma)
    denominator = snr_values + 1 if prediction_type == "v_prediction" else snr_values
    return clipped / denominator


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, optionally weighted per sample, averaged over the batch (in fp32)."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=tuple(range(1, prediction.ndim)))
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def prior_preservation_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, instances: int, prior_weight: float
) -> torch.Tensor:
    """DreamBooth: the first `instances` samples are the subject, the rest class images the base drew itself.

    instance loss + prior_weight x class loss, each a mean over its own part of the batch.
    """

    def loss(part: slice) -> torch.Tensor:
        return diffusion_loss(prediction[part], target[part], None if weights is None else weights[part])

    return loss(slice(0, instances)) + prior_weight * loss(slice(instances, None))
