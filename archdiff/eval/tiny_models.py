"""Tiny random metric models (CLIP, DINOv2) built offline, so `archdiff eval` and its tests run without the Hub.

They have the real models' architecture and folder layout (config, safetensors weights, tokenizer, image
processor config) at a few hundred KB, and load through the same `load_clip` / `load_dino` as the real ones.
Their numbers mean nothing; only the code paths are real.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from archdiff.run_files import staging_dir

TINY_IMAGE_SIZE = 32  # CLIP: 4x4 patches of 8 px; DINOv2: crop 28 = 2x2 patches of 14 px
_TINY_VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}


def write_model_atomically(folder: Path, build) -> Path:
    """`build(staging)` writes the model; a crash never leaves half a model under `folder`."""
    from archdiff.model.tiny import quiet_progress_bars

    folder = Path(folder)
    with staging_dir(folder.parent) as staging, quiet_progress_bars():
        build(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder


def _clip(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer, CLIPVisionConfig

    from archdiff.model.tiny import tiny_text_config, write_tokenizer_files

    torch.manual_seed(0)
    write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    text_config = tiny_text_config(tokenizer, 32)  # projection_dim 32, like the vision side
    vision_config = CLIPVisionConfig(
        image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=32, intermediate_size=64, **_TINY_VISION
    )
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=32)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The PIL processor (no torchvision here); its saved config names CLIPImageProcessor, as the Hub models' do.
    size = TINY_IMAGE_SIZE
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)


def _dino(folder: Path) -> None:
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(image_size=28, patch_size=14, mlp_ratio=2, **_TINY_VISION)  # MLP 64 wide, like the CLIP towers
    Dinov2Model(config).save_pretrained(folder)
    # DINOv2's own preprocessing (BitImageProcessor: resize the short side, centre crop, ImageNet mean/std), scaled down.
    BitImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": 28, "width": 28},
        do_convert_rgb=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def build_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel (2-layer text and vision towers, 32-d embeddings) with its tokenizer and image processor."""
    return write_model_atomically(folder, _clip)


def build_tiny_dino(folder: Path) -> Path:
    """A random Dinov2Model (2 layers, 32-d features) with DINOv2's image processor settings at 28 px."""
    return write_model_atomically(folder, _dino)
