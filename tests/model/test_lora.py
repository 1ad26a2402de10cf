"""LoRA save/load: alpha != rank must reload at the trained scale, and bad targets fail clearly."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from archdiff.config.schema import LoraConfig
from archdiff.errors import UserError
from archdiff.model.lora import attach_lora, save_lora


def unet_output(unet):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 5, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text).sample


def test_alpha_unlike_rank_reloads_at_the_trained_scale(tiny_base, tmp_path):
    cfg = LoraConfig(rank=4, alpha=16, target_modules=["to_q", "to_v", "conv1"])
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    attach_lora(unet, cfg)
    with torch.no_grad():  # make lora_B non-zero so the adapter matters
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    trained = unet_output(unet)
    save_lora(unet, cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pytorch_lora_weights.safetensors"]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    untouched = unet_output(pipe.unet)
    pipe.load_lora_weights(tmp_path)
    reloaded = unet_output(pipe.unet)
    assert (trained - untouched).abs().max() > 1e-3
    torch.testing.assert_close(reloaded, trained, rtol=1e-5, atol=1e-5)


def test_targets_that_match_nothing_are_a_user_error(tiny_base):
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    with pytest.raises(UserError, match="matched nothing"):
        attach_lora(unet, LoraConfig(target_modules=["no_such_layer"]))


def test_base_stays_frozen(tiny_base):
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    attach_lora(unet, LoraConfig(rank=2))
    trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_channels_last_lora_weights_save(tiny_base, tmp_path):
    """memory.channels_last makes conv LoRA weights non-contiguous; safetensors refuses those unless packed."""
    import torch
    from diffusers import UNet2DConditionModel

    from archdiff.config.schema import LoraConfig
    from archdiff.model.lora import attach_lora, save_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    cfg = LoraConfig(rank=4, alpha=4, target_modules=["conv1", "to_q"])
    attach_lora(unet, cfg)
    unet.to(memory_format=torch.channels_last)
    assert not unet.down_blocks[0].resnets[0].conv1.lora_A["default"].weight.is_contiguous()
    assert save_lora(unet, cfg, tmp_path).stat().st_size > 0
