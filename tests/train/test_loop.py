"""The training loop's parts, tested on their own: the guards and held-out evaluation."""

import pytest
import torch


def test_nan_guard_skips_the_update_on_the_device_and_names_the_first_bad_step(tmp_path):
    """Fused AdamW's found_inf flag skips the step without a host sync; the check (a sync) comes later."""
    from types import SimpleNamespace

    from archdiff.errors import UserError
    from archdiff.train.guards import NanGuard

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    guard = NanGuard(optimizer, "cpu", tmp_path)
    one_process = SimpleNamespace(num_processes=1)
    for step, loss in enumerate([1.0, float("nan"), 1.0], start=1):
        weight.grad = torch.full((3,), loss)
        before = weight.detach().clone()
        guard.record(torch.tensor(loss), step, one_process)
        optimizer.step()
        guard.step_done()
        assert torch.equal(weight, before) == (step == 2), f"only the non-finite step {step} is skipped"
    with pytest.raises(UserError, match="at step 2; nothing from that step was applied"):
        guard.check()


def test_evaluate_batches_no_larger_than_asked_and_weights_every_item_equally():
    """Held-out eval must fit wherever a training step fits; a short last batch must not skew the mean."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from archdiff.train.evaluation import EvalBatch, evaluate
    from archdiff.train.objective import DiffusionObjective
    from archdiff.train.step import Denoiser

    class RecordingUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))
            self.batch_sizes = []

        def forward(self, noisy, timesteps, embeddings, added_cond_kwargs=None):
            self.batch_sizes.append(len(noisy))
            return SimpleNamespace(sample=noisy * self.scale)

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    generator = torch.Generator().manual_seed(0)
    groups = [
        EvalBatch(
            batch={"text_embeddings": torch.zeros(n, 3, 8)},
            bucket=(16, 16),
            latents=torch.randn(n, 4, 2, 2, generator=generator),
            noise=torch.randn(n, 4, 2, 2, generator=generator),
            timesteps=torch.arange(n) * 100,
        )
        for n in (5, 3)
    ]
    alphas = torch.cumprod(1 - scheduler.betas.double(), dim=0).float()

    def item_losses(group):
        a = alphas[group.timesteps].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * group.latents + (1 - a).sqrt() * group.noise
        return ((noisy * 0.5 - group.noise) ** 2).mean(dim=(1, 2, 3))  # epsilon target: the noise

    expected = torch.cat([item_losses(g) for g in groups]).mean().item()
    unet = RecordingUNet()
    denoiser = Denoiser(unet, [], DiffusionObjective(scheduler, "epsilon"), "cpu")
    for batch_size in (1, 2, 16):
        unet.batch_sizes.clear()
        loss = evaluate(denoiser, groups, batch_size=batch_size)
        assert max(unet.batch_sizes) <= batch_size and sum(unet.batch_sizes) == 8
        assert loss == pytest.approx(expected, rel=1e-5)
    assert unet.training, "evaluate puts the UNet back in training mode"


def test_several_processes_agree_on_a_stop_only_at_logging_steps():
    """The collective that makes every rank stop at the same step is a host sync: not inside every step."""
    from types import SimpleNamespace

    from archdiff.train.guards import StopRequest, stop_requested

    gathered = []

    def gather(flag):
        gathered.append(flag.clone())
        return torch.cat([flag, torch.tensor([False])])  # the other rank was signalled

    two_processes = SimpleNamespace(num_processes=2, device="cpu", gather=gather)
    stop = StopRequest()
    assert [step for step in range(1, 31) if stop_requested(stop, two_processes, step, every=10)] == [10, 20, 30]
    assert len(gathered) == 3 and all(bool(flag.all()) for flag in gathered), "this rank reports it is still running"

    one_process = SimpleNamespace(num_processes=1)
    stop.signal_number = 15
    assert stop_requested(stop, one_process, 7, every=10), "one process stops at once, with no collective"
