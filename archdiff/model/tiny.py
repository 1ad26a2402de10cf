"""Tiny, randomly initialised diffusers pipelines built offline.

They have the real architecture's shape (UNet with cross-attention, factor-8 VAE, CLIP text encoder,
CLIP BPE tokenizer, SD noise schedule) at a few MB, so every code path that loads a Hub model is
exercised without a download. Written as a normal diffusers folder and loaded with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from archdiff.errors import UserError
from archdiff.run_files import staging_dir

FAMILIES = ("sd15", "sd2v", "sdxl")  # SD 1.x (epsilon), SD 2.x-v (v-prediction), SDXL (two text encoders)

_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_level_alphabet() -> list[str]:
    """CLIP's byte-to-unicode table: every byte maps to one printable character."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(visible), 0
    for byte in range(256):
        if byte not in visible:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tokenizer_files(folder: Path) -> None:
    """A CLIP BPE vocabulary with every byte bare and word-final (`</w>`), and no merges.

    Any text tokenizes (character by character), which is all a random text encoder needs.
    """
    alphabet = _byte_level_alphabet()
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *_SPECIAL_TOKENS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")


_SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def _text_config(tokenizer, hidden_size: int):
    """A 2-layer CLIP text encoder config over the tiny tokenizer's vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae():
    """Factor 8 like real SD (4 blocks): 64 px images give 8x8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
    )


def _tiny_unet(**layout):
    """Two cross-attention levels (latents halve once); `layout` adds the family's own settings."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=16,
        **layout,
    )


def _build_sd(folder: Path, prediction_type: str, linear_projection: bool) -> None:
    """SD 1.x's layout (epsilon, conv projections) or SD 2.x-v's (velocity target, linear projections)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    write_tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_size=32))
    unet = _tiny_unet(cross_attention_dim=32, use_linear_projection=linear_projection)
    vae = _tiny_vae()
    scheduler = DDPMScheduler(**_SD_SCHEDULE, prediction_type=prediction_type, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def _build_sdxl(folder: Path) -> None:
    """SDXL's layout: two text encoders (their penultimate states concatenated), pooled text + size/crop ids added."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(folder / name)
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / name, model_max_length=77))
    text_encoder = CLIPTextModel(_text_config(tokenizers[0], hidden_size=32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizers[1], hidden_size=48))
    time_embed_dim = 8
    unet = _tiny_unet(
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
    )
    vae = _tiny_vae()
    scheduler = EulerDiscreteScheduler(**_SD_SCHEDULE, prediction_type="epsilon", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)


_BUILDERS = {
    "sd15": lambda folder: _build_sd(folder, "epsilon", linear_projection=False),
    "sd2v": lambda folder: _build_sd(folder, "v_prediction", linear_projection=True),
    "sdxl": _build_sdxl,
}


@contextmanager
def _quiet_progress_bars():
    """Saving a few-MB model is instant: its "Writing model shards" bars would only clutter the output."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


def build_tiny_pipeline(folder: Path, family: str = "sd15", overwrite: bool = False) -> Path:
    """Write a tiny diffusers pipeline folder atomically (a crash never leaves half a model)."""
    if family not in _BUILDERS:
        raise UserError(f"unknown model family '{family}'; choose one of: {', '.join(FAMILIES)}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"{folder} already exists and is not empty; pick another folder")
    with staging_dir(folder.parent) as staging:
        with _quiet_progress_bars():
            _BUILDERS[family](staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder
