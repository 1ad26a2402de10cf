"""Image and caption preprocessing with PIL, numpy and torch (torchvision is kept out: see STACK-NOTES)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from archdiff.config.schema import DataConfig


def resize_and_crop(image: Image.Image, size: int, center: bool, rng: random.Random) -> Image.Image:
    """Scale the short side to `size`, then crop a `size` square (centred or at random)."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left = (width - size) // 2 if center else rng.randint(0, width - size)
    top = (height - size) // 2 if center else rng.randint(0, height - size)
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image):
    """HWC uint8 -> CHW float in [-1, 1], the VAE's input range."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(
        captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids


def make_transform(cfg: DataConfig, tokenizer, caption_column: str, train: bool) -> Callable[[dict], dict]:
    """A `datasets.set_transform` function: PIL images + captions -> pixel tensors + token ids.

    Random crops and flips draw from Python's `random`, which the trainer seeds.
    """

    def transform(batch: dict[str, list[Any]]) -> dict[str, Any]:
        rng = random if train else random.Random(0)
        images = []
        for image in batch["image"]:
            image = resize_and_crop(image, cfg.resolution, center=cfg.center_crop or not train, rng=rng)
            if train and cfg.random_flip and rng.random() < 0.5:
                image = ImageOps.mirror(image)
            images.append(to_tensor(image))
        return {"pixel_values": images, "input_ids": list(tokenize(tokenizer, list(batch[caption_column])))}

    return transform


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    }
