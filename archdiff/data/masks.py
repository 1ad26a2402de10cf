"""Loss masks: which pixels of a training image the loss learns from (white), ignores (black) or weighs partly (grey).

Architecture images carry what a LoRA should not learn (sky, cars, people, watermarks, title blocks). A source names
a mask image per image (`mask_column`) or takes each image's own alpha channel (`mask_alpha`). Masks are checked at
scan time like paired controls, follow the image's bucket, crop and augmentation through the same code, and reach
the loss as the latent grid's area average (numpy and PIL here; torch only in `latent_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from archdiff.errors import UserError

ALPHA = "alpha"  # the digest part of an alpha mask's cache key: the image's own content hash says the rest
LATENT_FACTOR = 8  # every family's VAE downsamples by 8
TINT = (220, 30, 30)  # the contact sheet's colour over ignored pixels, at half strength


@dataclass(frozen=True)
class MaskRef:
    """Where an image's mask comes from: a mask image (an undecoded `datasets.Image` value) or the image's alpha."""

    value: dict[str, Any] | None  # None: the image's own alpha channel
    digest: str  # the mask file's content hash, or ALPHA
    name: str


def alpha_mask() -> MaskRef:
    return MaskRef(None, ALPHA, ALPHA)


def mask_column_images(dataset: Any, column: str, label: str) -> Any:
    """The mask column as undecoded images, like a control column; refused when the source lacks it."""
    from archdiff.data.sources import _control_column

    if column not in dataset.column_names:
        raise UserError(
            f"data '{label}' has no mask column '{column}' (columns: {', '.join(dataset.column_names)}); "
            "name the column of mask files in mask_column, or set mask_alpha to use the images' alpha channel"
        )
    return _control_column(dataset, column, label)


def scan_mask(value: Any, name: str, label: str, target: tuple[int, int], scans, max_pixels: int) -> MaskRef | None:
    """The checked mask image of one target, None for an empty cell (the image then learns everywhere)."""
    from archdiff.data.pairs import scan_companion

    found = scan_companion(value, name, label, target, scans, max_pixels, "mask")
    return None if found is None else MaskRef(value, found[1], found[0])


def scan_record_mask(source, row: dict[str, Any], name: str, target: tuple[int, int], scans, max_pixels: int) -> MaskRef | None:
    """A scanned row's mask as its source's recipe says: its alpha channel, the mask its column names, or none."""
    if source.config.mask_alpha:
        return alpha_mask()
    if source.config.mask_column:
        return scan_mask(row[source.config.mask_column], name, source.label, target, scans, max_pixels)
    return None


def mask_image(mask: MaskRef, image_bytes, size: tuple[int, int], kind: str, max_pixels: int) -> Image.Image | None:
    """The full-size upright mask (mode L, 255 = learn) of an image of `size`; None where it learns everywhere.

    `image_bytes()` gives the image's own bytes (read only for an alpha mask). A mask image of another resolution
    is scaled to the image's with the image kind's filter.
    """
    from archdiff.data.catalog import read_image_value
    from archdiff.data.images import ALPHA_MODES, open_upright, resize, to_rgb

    if mask.value is None:
        image = open_upright(image_bytes(), max_pixels)
        if image.mode not in ALPHA_MODES and "transparency" not in image.info:
            return None
        return image.convert("RGBA").getchannel("A")
    grey = to_rgb(open_upright(read_image_value(mask.value), max_pixels)).convert("L")
    return grey if grey.size == size else resize(grey, size, kind)


def area_downsample(weights: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """Each factor x factor block's mean: what share of a latent cell's pixels are learnt (sides divisible by factor)."""
    height, width = weights.shape
    if height % factor or width % factor:
        raise ValueError(f"a {width}x{height} mask does not divide into {factor}x{factor} blocks")
    return weights.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def latent_mask(mask: Image.Image | None, bucket: tuple[int, int]):
    """A bucket-sized mask as the loss weights its latents: (1, h/8, w/8) float32 in [0, 1]; ones for None."""
    import torch

    width, height = bucket
    if mask is None:
        return torch.ones(1, height // LATENT_FACTOR, width // LATENT_FACTOR)
    weights = np.asarray(mask, dtype=np.float64) / 255.0
    return torch.from_numpy(area_downsample(weights).astype(np.float32)).unsqueeze(0)


def tinted(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """The image with what its mask ignores tinted red at 50 % (partly learnt pixels in proportion): the contact sheet's view."""
    if mask is None:
        return image
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    ignored = 0.5 * (1.0 - np.asarray(mask.resize(image.size, Image.Resampling.BILINEAR), dtype=np.float64) / 255.0)
    mixed = pixels * (1.0 - ignored[..., None]) + np.array(TINT, dtype=np.float64) * ignored[..., None]
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))
