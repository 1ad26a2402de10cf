"""Randomly initialised diffusers pipelines built offline: tiny ones, and real-size ones.

Tiny pipelines have the real architecture's shape (UNet with cross-attention, factor-8 VAE, CLIP text
encoder, CLIP BPE tokenizer, SD noise schedule; SD3's MMDiT, T5 and flow matching in model/tiny_sd3.py)
at a few MB, so every code path that loads a Hub model is exercised without a download. Real-size ones
have exactly the published models' layers and parameter counts (SD 1.5, SD 2.1-v, SDXL 1.0, SD 3.5
Medium) with random weights, so speed and memory can be measured on a GPU without downloading gigabytes.
Both are written as normal diffusers folders and loaded with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

from archdiff.errors import UserError
from archdiff.model.tiny_sd3 import sd3_pipeline
from archdiff.run_files import staging_dir

# SD 1.x (epsilon), SD 2.x-v (v-prediction), SDXL (two text encoders), SD 3.5 (MMDiT, three text encoders, flow matching)
FAMILIES = ("sd15", "sd2v", "sdxl", "sd3")
SIZES = ("tiny", "full")

_CROSS_DOWN, _CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
_REAL_VOCAB = 49408  # CLIP's; the embedding rows count towards the real text encoders' size
# The published models' layouts (their configs on the Hub), checked by parameter count in the tests.
_REAL_TEXT = {
    "clip-l": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "projection_dim": 768, "hidden_act": "quick_gelu"},
    "openclip-h": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                   "projection_dim": 512, "hidden_act": "gelu"},
    "openclip-bigg": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                      "projection_dim": 1280, "hidden_act": "gelu"},
}  # fmt: skip
_SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": (_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, "DownBlock2D"),
    "up_block_types": ("UpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP),
    "attention_head_dim": 8,
}
_REAL_UNET = {
    "sd15": _SD15_UNET,
    "sd2v": {**_SD15_UNET, "sample_size": 96, "attention_head_dim": (5, 10, 20, 20)},
    "sdxl": {
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", _CROSS_DOWN, _CROSS_DOWN),
        "up_block_types": (_CROSS_UP, _CROSS_UP, "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
    },
}
_SDXL_TIME_EMBED_DIM = {"tiny": 8, "full": 256}  # each of the 6 size/crop ids is embedded this wide, then joined to pooled text
_REAL_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
_REAL_VAE_SIZE = {
    "sd15": {"sample_size": 512},
    "sd2v": {"sample_size": 768},
    "sdxl": {"sample_size": 1024, "scaling_factor": 0.13025},
    "sd3": {"sample_size": 1024},
}

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


def tiny_text_config(tokenizer, hidden_size: int, real: str | None = None):
    """A 2-layer CLIP text encoder config over the tiny tokenizer's vocabulary, or a real encoder's layout."""
    from transformers import CLIPTextConfig

    if real:
        layout, vocab_size = _REAL_TEXT[real], _REAL_VOCAB
    else:
        layout = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "projection_dim": 32}  # fmt: skip
        vocab_size = len(tokenizer)
    return CLIPTextConfig(
        vocab_size=vocab_size,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **layout,
    )


def random_vae(family: str, full: bool, **changes):
    """The family's VAE: SD's real layout or the tiny one; `changes` (SD3's 16 latent channels ...) apply to both."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**_REAL_VAE, **_REAL_VAE_SIZE[family], **changes}) if full else _tiny_vae(**changes)


def _unet(family: str, full: bool, **layout):
    """The family's UNet: real-size, or tiny; `layout` holds what the text encoders decide (cross-attention width ...)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_REAL_UNET[family], **layout) if full else _tiny_unet(**layout)


def _tiny_vae(**changes):
    """Factor 8 like real SD (4 blocks): 64 px images give 8x8 latents."""
    from diffusers import AutoencoderKL

    layout = {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
    }
    return AutoencoderKL(**{**layout, **changes})


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


def _sd_pipeline(folder: Path, family: str, full: bool):
    """SD 1.x's layout (epsilon, conv projections) or SD 2.x-v's (velocity target, linear projections)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    sd2 = family == "sd2v"
    prediction_type = "v_prediction" if sd2 else "epsilon"
    torch.manual_seed(0)
    write_tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, 32, real=("openclip-h" if sd2 else "clip-l") if full else None))
    unet = _unet(family, full, cross_attention_dim=text_encoder.config.hidden_size, use_linear_projection=sd2)
    vae = random_vae(family, full)
    scheduler = DDPMScheduler(**_SD_SCHEDULE, prediction_type=prediction_type, clip_sample=False)
    return StableDiffusionPipeline(
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


def _sdxl_pipeline(folder: Path, family: str, full: bool):
    """SDXL's layout: two text encoders (their penultimate states concatenated), pooled text + size/crop ids added."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(folder / name)
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / name, model_max_length=77))
    text_encoder = CLIPTextModel(tiny_text_config(tokenizers[0], 32, real="clip-l" if full else None))
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizers[1], 48, real="openclip-bigg" if full else None))
    time_embed_dim = _SDXL_TIME_EMBED_DIM["full" if full else "tiny"]
    unet = _unet(
        family,
        full,
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
    )
    vae = random_vae(family, full)
    scheduler = EulerDiscreteScheduler(**_SD_SCHEDULE, prediction_type="epsilon", timestep_spacing="leading")
    return StableDiffusionXLPipeline(
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


_PIPELINES = {"sd15": _sd_pipeline, "sd2v": _sd_pipeline, "sdxl": _sdxl_pipeline, "sd3": sd3_pipeline}


def random_pipeline(folder: Path, family: str, size: str):
    """The pipeline, in memory (its tokenizer files are written into `folder`); under accelerate's
    `init_empty_weights()` no weights are allocated, which is how the tests check the real-size layouts."""
    if family not in _PIPELINES:
        raise UserError(f"unknown model family '{family}'; choose one of: {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise UserError(f"unknown model size '{size}'; choose one of: {', '.join(SIZES)}")
    return _PIPELINES[family](folder, family, size == "full")


@contextmanager
def quiet_progress_bars():
    """Saving a few-MB model is instant: its "Writing model shards" bars would only clutter the output."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


def build_random_pipeline(folder: Path, family: str = "sd15", size: str = "tiny", overwrite: bool = False) -> Path:
    """Write a random diffusers pipeline folder atomically (a crash never leaves half a model).

    Real-size weights go to disk in fp16, half the gigabytes; a run casts them to its own dtype."""
    import torch

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"{folder} already exists and is not empty; pick another folder")
    with staging_dir(folder.parent) as staging:
        pipe = random_pipeline(staging, family, size)
        if size == "full":
            for part in pipe.components.values():
                if isinstance(part, torch.nn.Module):
                    part.half()
        with quiet_progress_bars() if size == "tiny" else nullcontext():
            pipe.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder
