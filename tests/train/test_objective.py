"""The objective's maths, each function alone, checked against diffusers' own implementations."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

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


@pytest.fixture
def scheduler():
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def latents_and_noise(seed=0, shape=(3, 4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_add_noise_matches_the_scheduler(scheduler):
    latents, noise = latents_and_noise()
    timesteps = torch.tensor([0, 500, 999])
    expected = scheduler.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(add_noise(latents, noise, timesteps, scheduler.alphas_cumprod), expected)


def test_velocity_target_matches_the_scheduler(scheduler):
    latents, noise = latents_and_noise()
    timesteps = torch.tensor([10, 400, 990])
    expected = scheduler.get_velocity(latents, noise, timesteps)
    actual = training_target(latents, noise, timesteps, scheduler.alphas_cumprod, "v_prediction")
    torch.testing.assert_close(actual, expected)


def test_epsilon_target_is_the_noise(scheduler):
    latents, noise = latents_and_noise()
    target = training_target(latents, noise, torch.tensor([1, 2, 3]), scheduler.alphas_cumprod, "epsilon")
    assert target is noise


def test_unknown_target_is_refused(scheduler):
    latents, noise = latents_and_noise()
    with pytest.raises(ValueError, match="sample"):
        training_target(latents, noise, torch.tensor([1, 2, 3]), scheduler.alphas_cumprod, "sample")


def test_snr_matches_diffusers(scheduler):
    timesteps = torch.tensor([0, 1, 250, 999])
    torch.testing.assert_close(snr(timesteps, scheduler.alphas_cumprod), compute_snr(scheduler, timesteps))


def test_min_snr_weights_clip_high_snr_only():
    snr_values = torch.tensor([0.5, 5.0, 50.0])
    eps = min_snr_weights(snr_values, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 0.1]))
    v = min_snr_weights(snr_values, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.5 / 1.5, 5.0 / 6.0, 5.0 / 51.0]))


def test_noise_offset_shifts_each_channel_by_a_constant():
    latents = torch.zeros(2, 4, 8, 8)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(1))
    shifted = sample_noise(latents, 0.1, torch.Generator().manual_seed(1))
    difference = shifted - plain
    assert difference.abs().sum() > 0
    # the offset is constant over each (sample, channel) plane
    torch.testing.assert_close(difference, difference[..., :1, :1].expand_as(difference))


def test_noise_is_reproducible_with_a_generator():
    latents = torch.zeros(2, 4, 8, 8)
    first = sample_noise(latents, 0.05, torch.Generator().manual_seed(3))
    again = sample_noise(latents, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_timesteps_are_in_range_and_cover_it():
    timesteps = sample_timesteps(4000, 1000, "cpu", torch.Generator().manual_seed(0))
    assert timesteps.dtype == torch.long
    assert timesteps.min() >= 0 and timesteps.max() <= 999
    assert timesteps.min() < 10 and timesteps.max() > 990


def test_stratified_timesteps_are_fixed_and_even():
    assert stratified_timesteps(4, 1000).tolist() == [125, 375, 625, 875]
    assert stratified_timesteps(1000, 1000).tolist() == list(range(1000))


def test_loss_is_per_sample_mse_then_weighted_mean():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    assert diffusion_loss(prediction, target).item() == pytest.approx((1 + 4) / 2)
    weights = torch.tensor([1.0, 0.5])
    assert diffusion_loss(prediction, target, weights).item() == pytest.approx((1 + 2) / 2)


def test_loss_is_computed_in_fp32():
    prediction = torch.full((1, 1, 2, 2), 300.0, dtype=torch.float16)
    target = torch.zeros(1, 1, 2, 2, dtype=torch.float16)
    loss = diffusion_loss(prediction, target)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(90000.0)


def test_prior_preservation_loss_weights_the_class_half():
    from archdiff.train.objective import prior_preservation_loss

    target = torch.zeros(4, 2)
    prediction = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0]])  # subject error 1, class error 4
    assert prior_preservation_loss(prediction, target, None, 2, 0.5).item() == pytest.approx(1.0 + 0.5 * 4.0)
    weights = torch.tensor([1.0, 3.0, 1.0, 0.0])
    assert prior_preservation_loss(prediction, target, weights, 2, 1.0).item() == pytest.approx(2.0 + 2.0)
