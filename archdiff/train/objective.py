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


def masked(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample sum(mask * error) / sum(mask), the mask (B, 1, h, w) broadcast over channels: the mean error over
    what the mask keeps, so a half-masked image teaches as firmly as a whole one. An all-zero mask gives 0, not NaN."""
    weights = mask.to(error.dtype).expand_as(error)
    dims = tuple(range(1, error.ndim))
    kept = weights.sum(dim=dims)
    return (weights * error).sum(dim=dims) / kept.clamp(min=torch.finfo(error.dtype).tiny)


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per sample (over what `mask` keeps, when given), optionally weighted per sample,
    averaged over the batch (in fp32)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = error.mean(dim=tuple(range(1, prediction.ndim))) if mask is None else masked(error, mask)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def prior_preservation_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    instances: int,
    prior_weight: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """DreamBooth: the first `instances` samples are the subject, the rest class images the base drew itself.

    instance loss + prior_weight x class loss, each a mean over its own part of the batch.
    """

    def loss(part: slice) -> torch.Tensor:
        part_mask = None if mask is None else mask[part]
        return diffusion_loss(prediction[part], target[part], None if weights is None else weights[part], part_mask)

    return loss(slice(0, instances)) + prior_weight * loss(slice(instances, None))


# Rectified flow (SD 3.x): x_t = (1 - sigma) x_0 + sigma * noise, and the transformer predicts the velocity noise - x_0.
# The scheduler's timesteps are sigma * num_train_timesteps (after its resolution shift); training draws them
# logit-normally (the SD3 paper's choice: more weight on the middle of the path).


def flow_sigmas(timesteps: torch.Tensor, num_train_timesteps: int, ndim: int) -> torch.Tensor:
    """Each timestep's sigma, shaped to broadcast over latents of `ndim` dimensions."""
    sigmas = timesteps.float() / num_train_timesteps
    return sigmas.reshape(-1, *([1] * (ndim - 1)))


def flow_noisy(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The point at `sigmas` on the straight path from the latents (sigma 0) to the noise (sigma 1)."""
    return (1.0 - sigmas) * latents + sigmas * noise


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The path's velocity: what the transformer learns to predict."""
    return noise - latents


def logit_normal_indices(
    count: int, num_train_timesteps: int, mean: float = 0.0, std: float = 1.0, device="cpu", generator=None
) -> torch.Tensor:
    """Indices into the scheduler's timesteps, u ~ sigmoid(N(mean, std)) scaled to [0, num_train_timesteps)."""
    u = torch.sigmoid(torch.normal(mean, std, size=(count,), device=device, generator=generator))
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


class DiffusionObjective:
    """SD 1.x/2.x and SDXL: the DDPM schedule adds the noise; the UNet predicts the noise or the velocity."""

    def __init__(self, scheduler, prediction_type: str):
        self.scheduler, self.prediction_type = scheduler, prediction_type
        self.num_train_timesteps = scheduler.config.num_train_timesteps

    def draw_timesteps(self, count: int, device, generator=None) -> torch.Tensor:
        return sample_timesteps(count, self.num_train_timesteps, device, generator)

    def fixed_timesteps(self, count: int) -> torch.Tensor:
        return stratified_timesteps(count, self.num_train_timesteps)

    def noisy(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        return training_target(self.scheduler, latents, noise, timesteps, self.prediction_type)

    def weights(self, timesteps, snr_gamma: float | None):
        """Min-SNR weights when asked (training only), else none."""
        from diffusers.training_utils import compute_snr

        return min_snr_weights(compute_snr(self.scheduler, timesteps), snr_gamma, self.prediction_type) if snr_gamma else None


class FlowObjective:
    """SD 3.x: rectified flow on the flow-matching scheduler's own timesteps (its shift included)."""

    prediction_type = "flow"

    def __init__(self, scheduler, logit_mean: float = 0.0, logit_std: float = 1.0):
        self.scheduler, self.logit_mean, self.logit_std = scheduler, logit_mean, logit_std
        self.num_train_timesteps = scheduler.config.num_train_timesteps

    def _timesteps(self, indices: torch.Tensor) -> torch.Tensor:
        return self.scheduler.timesteps[indices.cpu()].to(indices.device)

    def draw_timesteps(self, count: int, device, generator=None) -> torch.Tensor:
        return self._timesteps(
            logit_normal_indices(count, self.num_train_timesteps, self.logit_mean, self.logit_std, device, generator)
        )

    def fixed_timesteps(self, count: int) -> torch.Tensor:
        return self._timesteps(stratified_timesteps(count, self.num_train_timesteps))

    def noisy(self, latents, noise, timesteps):
        return flow_noisy(latents, noise, flow_sigmas(timesteps, self.num_train_timesteps, latents.ndim).to(latents.dtype))

    def target(self, latents, noise, timesteps):
        return flow_target(latents, noise)

    def weights(self, timesteps, snr_gamma: float | None):
        """Uniform: with logit-normal sampling the SD3 paper weighs every sampled point alike (Min-SNR is DDPM's)."""
        return None
