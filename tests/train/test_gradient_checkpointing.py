"""`memory.gradient_checkpointing: true` recomputes activations in the backward pass and changes nothing else:
the same LoRA gradients on the tiny UNet with the adapter attached as a run attaches it, and the same LoRA
after a few steps of a real run (which checkpoints, not merely accepts the flag)."""

import pytest
import torch
from safetensors.torch import load_file

from archdiff.config import load_recipe


def lora_gradients(base: str, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """One training-mode forward and backward of the tiny UNet with the demo recipe's LoRA, set up as run() does.

    Returns every LoRA parameter's gradient and how many leaf modules ran during the backward pass (recomputation).
    """
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import cast_training_params

    from archdiff.model.lora import attach_lora
    from archdiff.model.memory import apply_memory_options

    recipe = load_recipe("demo-tiny", [f"memory.gradient_checkpointing={str(checkpointing).lower()}"])
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    torch.manual_seed(0)  # the adapter's random init
    attach_lora(unet, recipe.lora)
    cast_training_params(unet, dtype=torch.float32)
    apply_memory_options(unet, recipe.memory)
    generator = torch.Generator().manual_seed(1)
    lora = {name: p for name, p in unet.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in name for name in lora)
    with torch.no_grad():  # lora_B starts at zero, which leaves lora_A without a gradient: make both count
        for name, param in lora.items():
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    calls = []
    leaves = [m for m in unet.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in leaves]
    unet.train()
    noisy = torch.randn(2, 4, 8, 8, generator=generator)  # no input needs a gradient, as in training
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    prediction = unet(noisy, torch.tensor([10, 700]), text).sample
    loss = torch.nn.functional.mse_loss(prediction, torch.randn(prediction.shape, generator=generator))
    forward_calls = len(calls)
    loss.backward()
    for handle in handles:
        handle.remove()
    return {name: param.grad for name, param in lora.items()}, len(calls) - forward_calls


def test_gradient_checkpointing_recomputes_and_gives_the_same_lora_gradients(tiny_base):
    plain, plain_recomputed = lora_gradients(tiny_base, checkpointing=False)
    checkpointed, recomputed = lora_gradients(tiny_base, checkpointing=True)
    assert plain_recomputed == 0 and recomputed > 0, "with checkpointing the backward pass re-runs the blocks"
    assert plain.keys() == checkpointed.keys()
    assert all(grad is not None and grad.abs().max() > 0 for grad in plain.values()), "every LoRA tensor gets a gradient"
    for name, grad in plain.items():
        assert checkpointed[name] is not None, f"{name} lost its gradient under checkpointing"
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item(), msg=name)


@pytest.mark.slow
def test_a_run_with_gradient_checkpointing_checkpoints_and_trains_the_same_lora(tmp_path, tiny_base, monkeypatch):
    import torch.utils.checkpoint

    from archdiff.train.run import run

    real_checkpoint, checkpointed = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(*args, **kwargs):  # what diffusers calls for each checkpointed block
        checkpointed.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    loras = {}
    for flag in ("false", "true"):
        checkpointed.clear()
        overrides = [f"output={tmp_path / flag}", f"memory.gradient_checkpointing={flag}", "train.max_steps=4"]
        overrides += ["train.checkpoint_every=null", "validation.prompts=[]", "data.holdout=0"]
        loras[flag] = load_file(run(load_recipe("demo-tiny", overrides)).lora_file)
        assert bool(checkpointed) == (flag == "true"), f"gradient_checkpointing={flag}: {len(checkpointed)} checkpointed calls"
    plain, checkpointed_lora = loras["false"], loras["true"]
    assert plain.keys() == checkpointed_lora.keys()
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed_lora[key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert any(not torch.equal(value, torch.zeros_like(value)) for key, value in plain.items() if "lora_B" in key)
