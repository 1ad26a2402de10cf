"""The objective's maths, each function alone, checked against an independent computation: the formulas
for the parts archdiff takes from diffusers (add_noise, get_velocity, compute_snr), so a change there shows."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from archdiff.train.objective import (
    diffusion_loss,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    stratified_timesteps,
    training_target,
)


@pytest.fixture
def scheduler():
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def latents_and_noise(seed=0, shape=(3, 4, 8, 8)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def alpha(scheduler, timesteps):
    """a_t per sample, shaped to broadcast over latents, from the betas (not from the scheduler's own cumprod)."""
    betas = scheduler.betas.double()
    return torch.cumprod(1 - betas, dim=0)[timesteps].float().reshape(-1, 1, 1, 1)


def test_add_noise_is_forward_diffusion(scheduler):
    latents, noise = latents_and_noise()
    timesteps = torch.tensor([0, 500, 999])
    a = alpha(scheduler, timesteps)
    expected = a.sqrt() * latents + (1 - a).sqrt() * noise
    torch.testing.assert_close(scheduler.add_noise(latents, noise, timesteps), expected)


def test_velocity_target_is_sqrt_a_eps_minus_sqrt_one_minus_a_x0(scheduler):
    latents, noise = latents_and_noise()
    timesteps = torch.tensor([10, 400, 990])
    a = alpha(scheduler, timesteps)
    expected = a.sqrt() * noise - (1 - a).sqrt() * latents
    torch.testing.assert_close(training_target(scheduler, latents, noise, timesteps, "v_prediction"), expected)


def test_epsilon_target_is_the_noise(scheduler):
    latents, noise = latents_and_noise()
    target = training_target(scheduler, latents, noise, torch.tensor([1, 2, 3]), "epsilon")
    assert target is noise


def test_unknown_target_is_refused(scheduler):
    latents, noise = latents_and_noise()
    with pytest.raises(ValueError, match="sample"):
        training_target(scheduler, latents, noise, torch.tensor([1, 2, 3]), "sample")


def test_snr_is_a_over_one_minus_a(scheduler):
    timesteps = torch.tensor([0, 1, 250, 999])
    a = alpha(scheduler, timesteps).flatten()
    torch.testing.assert_close(compute_snr(scheduler, timesteps), a / (1 - a))


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


# Rectified flow (SD 3.x), checked against diffusers' FlowMatchEulerDiscreteScheduler: its forward process
# (`scale_noise`), its sigmas, and its Euler step.


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_noising_is_the_schedulers_scale_noise(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from archdiff.train.objective import FlowObjective

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    objective = FlowObjective(scheduler)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(6, 16, 8, 8, generator=generator), torch.randn(6, 16, 8, 8, generator=generator)
    timesteps = objective.draw_timesteps(6, "cpu", generator)
    assert torch.allclose(objective.noisy(latents, noise, timesteps), scheduler.scale_noise(latents, timesteps, noise), atol=1e-6)
    fixed = objective.fixed_timesteps(5)
    assert torch.allclose(
        objective.noisy(latents[:5], noise[:5], fixed), scheduler.scale_noise(latents[:5], fixed, noise[:5]), atol=1e-6
    )


def test_flow_sigmas_are_the_schedulers_and_the_target_is_the_paths_velocity():
    """An Euler step of the scheduler fed the target as the model's output lands exactly on the path's next point."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from archdiff.train.objective import flow_noisy, flow_sigmas, flow_target

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    indices = torch.tensor([0, 10, 500, 998])
    sigmas = flow_sigmas(scheduler.timesteps[indices], 1000, ndim=1)
    assert torch.allclose(sigmas, scheduler.sigmas[indices], atol=1e-6)
    generator = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(1, 16, 4, 4, generator=generator), torch.randn(1, 16, 4, 4, generator=generator)
    scheduler.set_timesteps(10)
    for step, timestep in enumerate(scheduler.timesteps[:-1]):
        here = flow_noisy(latents, noise, scheduler.sigmas[step])
        following = scheduler.step(flow_target(latents, noise), timestep, here).prev_sample
        assert torch.allclose(following, flow_noisy(latents, noise, scheduler.sigmas[step + 1]), atol=1e-5)


def test_logit_normal_timesteps_favour_the_middle_and_are_seeded():
    from archdiff.train.objective import logit_normal_indices

    draw = logit_normal_indices(20_000, 1000, generator=torch.Generator().manual_seed(0))
    assert draw.min() >= 0 and draw.max() <= 999
    middle = ((draw > 250) & (draw < 750)).float().mean()
    assert middle > 0.65  # uniform would give 0.5; sigmoid(N(0, 1)) puts ~0.73 of the mass there
    again = logit_normal_indices(20_000, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)


def test_the_diffusion_objective_is_the_schedulers_maths():
    from diffusers import DDPMScheduler

    from archdiff.train.objective import DiffusionObjective

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    objective = DiffusionObjective(scheduler, "v_prediction")
    generator = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = objective.draw_timesteps(4, "cpu", generator)
    assert torch.equal(objective.noisy(latents, noise, timesteps), scheduler.add_noise(latents, noise, timesteps))
    assert torch.equal(objective.target(latents, noise, timesteps), scheduler.get_velocity(latents, noise, timesteps))
    assert objective.weights(timesteps, None) is None and objective.weights(timesteps, 5.0).shape == (4,)
