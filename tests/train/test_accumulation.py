"""Gradient accumulation: k micro-batches make the update one batch k times larger would make."""

import pytest
import torch
from safetensors.torch import load_file

from archdiff.config import load_recipe
from archdiff.run_files import MetricsLog, complete_checkpoints
from archdiff.train.checkpoints import read_state
from archdiff.train.run import run


def tiny_lora_unet(tiny_base):
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import cast_training_params

    from archdiff.config.schema import LoraConfig
    from archdiff.model.lora import attach_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    attach_lora(unet, LoraConfig(rank=4, alpha=4))
    cast_training_params(unet, dtype=torch.float32)
    for name, param in unet.named_parameters():  # peft starts lora_B at zero: give every LoRA weight a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    return unet


def one_update(tiny_base, batch_size: int, accumulation: int) -> tuple[dict, dict, float]:
    """One optimizer step over the same two samples (fixed latents, captions, noise, timesteps):
    the gradients it applied, the LoRA weights after it, and the learning rate."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from archdiff.train.loop import make_optimizer
    from archdiff.train.objective import DiffusionObjective
    from archdiff.train.step import Denoiser, denoising_loss

    torch.manual_seed(0)
    recipe = load_recipe("demo-tiny", [f"train.batch_size={batch_size}", f"train.gradient_accumulation={accumulation}"])
    generator = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    embeddings, timesteps = torch.randn(2, 77, 32, generator=generator), torch.tensor([120, 870])
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    unet = tiny_lora_unet(tiny_base)
    optimizer = make_optimizer([p for p in unet.parameters() if p.requires_grad], recipe)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    denoiser = Denoiser(
        unet, [], DiffusionObjective(DDPMScheduler.from_pretrained(tiny_base, subfolder="scheduler"), "epsilon"), "cpu"
    )
    trained = {name: p for name, p in accelerator.unwrap_model(unet).named_parameters() if p.requires_grad}
    gradients, steps = {}, 0
    for start in range(0, 2, batch_size):
        window = slice(start, start + batch_size)
        with accelerator.accumulate(unet):
            batch = {"text_embeddings": embeddings[window]}
            loss = denoising_loss(denoiser, batch, (64, 64), latents[window], noise[window], timesteps[window])
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                gradients = {name: p.grad.clone() for name, p in trained.items()}
            optimizer.step()
            steps += accelerator.sync_gradients
            optimizer.zero_grad()
    assert steps == 1, "the optimizer stepped once per window"
    return gradients, {name: p.detach().clone() for name, p in trained.items()}, recipe.train.learning_rate


def test_batch_one_times_accumulation_two_updates_like_batch_two(tiny_base):
    """The same gradient (the mean over both samples, not the sum) and so the same AdamW step.

    AdamW's first step moves each weight by about lr * sign(gradient); where a gradient is within float noise
    of zero that sign is noise too, so the weights are compared to a small fraction of lr."""
    whole_gradients, whole, lr = one_update(tiny_base, 2, 1)
    accumulated_gradients, accumulated, _ = one_update(tiny_base, 1, 2)
    before = {name: p for name, p in tiny_lora_unet(tiny_base).named_parameters() if p.requires_grad}
    assert all(not torch.equal(whole[name], before[name]) for name in whole), "every LoRA weight moved"
    for name in whole:
        scale = whole_gradients[name].abs().max().item()
        torch.testing.assert_close(accumulated_gradients[name], whole_gradients[name], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(accumulated[name], whole[name], rtol=0, atol=0.2 * lr)


STEPS = 6


def accumulating_recipe(output, **train):
    overrides = [
        f"output={output}",
        f"train.max_steps={STEPS}",
        "train.batch_size=2",
        "train.gradient_accumulation=2",
        "train.lr_scheduler=linear",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "train.checkpoint_limit=10",
        "validation.prompts=[]",
    ]
    return load_recipe("demo-tiny", overrides + [f"train.{key}={value}" for key, value in train.items()])


@pytest.fixture(scope="module")
def accumulated_run(tmp_path_factory, tiny_base):
    return run(accumulating_recipe(tmp_path_factory.mktemp("accumulate") / "whole")).run_dir


@pytest.mark.slow
def test_the_lr_schedule_and_checkpoints_count_optimizer_steps(accumulated_run):
    recipe = accumulating_recipe(accumulated_run)
    rows = [row for row in MetricsLog.read(accumulated_run / "metrics.jsonl") if row["step"] > 0]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    peak, warmup = recipe.train.learning_rate, recipe.train.warmup_steps

    def linear(step):  # diffusers' linear schedule with warmup, written out: the lr of the update after `step` updates
        return peak * step / warmup if step < warmup else peak * (STEPS - step) / (STEPS - warmup)

    assert [row["lr"] for row in rows] == pytest.approx([linear(step - 1) for step in range(1, STEPS + 1)])
    states = [read_state(checkpoint) for checkpoint in complete_checkpoints(accumulated_run)]
    assert [(s.step, s.batches) for s in states] == [(step, 2 * step) for step in range(1, STEPS + 1)]


@pytest.mark.slow
def test_a_crash_inside_an_accumulation_window_resumes_bit_identical(tmp_path, accumulated_run, monkeypatch):
    """Crash on the first micro-batch of step 4 (after step 3's checkpoint), then resume from it."""
    import archdiff.train.loop as loop

    real_loss, calls = loop.denoising_loss, []

    def crash_mid_window(*args, **kwargs):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 7:  # micro-batches 1-6 made steps 1-3; the 7th opens step 4's window
                raise RuntimeError("simulated crash")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "denoising_loss", crash_mid_window)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(accumulating_recipe(tmp_path / "crashed"))
    assert read_state(complete_checkpoints(tmp_path / "crashed")[-1]).step == 3
    monkeypatch.undo()
    resumed = run(accumulating_recipe(tmp_path / "crashed"), resume="latest")
    assert resumed.steps_trained == STEPS - 3
    expected, got = load_file(accumulated_run / "pytorch_lora_weights.safetensors"), load_file(resumed.lora_file)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
