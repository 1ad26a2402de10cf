"""Opening, converting, resizing, tiling and augmenting training images (PIL and numpy; torch only in `to_tensor`).

Photos and drawings (plans, sections, elevations) need different handling: drawings are thin dark lines
on white, often in odd modes (1-bit, palette, 16-bit, transparent sheets), and carry text and north
arrows, so they are never mirrored and are resized with a filter that keeps 1-px lines.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

WHITE = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEGs some cameras write, decoded like JPEG
ROTATIONS = {"rot90": Image.Transpose.ROTATE_90, "rot180": Image.Transpose.ROTATE_180, "rot270": Image.Transpose.ROTATE_270}


HEIF_SUFFIXES = {".heic", ".heif"}
HEIF_HINT = (
    "HEIC/HEIF photo, which Pillow reads only with pillow-heif: pip install pillow-heif "
    "(archdiff uses it once installed), or convert it to JPEG or PNG"
)


@functools.cache
def heif_available() -> bool:
    """Whether pillow-heif is installed; registers its HEIC/HEIF opener with Pillow when it is."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _is_heif(data: bytes) -> bool:
    """An ISO media file (HEIC/HEIF, also AVIF) by its `ftyp` box, whatever the file is called."""
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")


class UnreadableImage(Exception):
    """An image file that cannot be trained on; str() is a short reason for the run's data report."""


class HeifUnsupported(UnreadableImage):
    """A HEIC/HEIF file while pillow-heif is not installed: not cached, since installing it changes the answer."""


class TooManyPixels(UnreadableImage):
    """Over data.max_pixels: refused from the header, so whether the file decodes is not known."""


@contextmanager
def _pil_pixel_guard_lifted() -> Iterator[None]:
    """PIL refuses (or warns about) big images by its own global limit; `open_image` enforces data.max_pixels instead."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise TooManyPixels(f"{width}x{height} = {pixels} pixels, over data.max_pixels ({max_pixels})")


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The file's header, its pixel count checked before any decoding (decompression bombs). Call under the lifted guard."""
    if not data:
        raise UnreadableImage("empty file")
    if _is_heif(data) and not heif_available():
        raise HeifUnsupported(HEIF_HINT)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage(f"truncated or corrupt image ({error})") from None
    check_pixels(image.width, image.height, max_pixels)
    return image


def _sideways(image: Image.Image) -> bool:
    """Whether EXIF orientation turns the stored image by 90 degrees (tags 5-8), swapping its width and height."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """An opened (not yet decoded) image's full size after EXIF orientation, from its header."""
    return (image.height, image.width) if _sideways(image) else image.size


def _decoded(image: Image.Image, reduce_to: tuple[int, int] | None) -> Image.Image:
    """Load an opened image, a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) still covering `reduce_to` (upright size).

    Draft sizes are in stored orientation, hence the swap for sideways photos; PNG, TIFF and the rest decode fully.
    """
    try:
        if reduce_to and image.format in JPEG_FORMATS:
            image.draft(None, reduce_to[::-1] if _sideways(image) else reduce_to)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage(f"truncated or corrupt image ({error})") from None
    return image


def open_upright(data: bytes, max_pixels: int, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decoded and upright (EXIF) in the file's own mode: what `open_image` turns to RGB, and where a mask's alpha lives."""
    with _pil_pixel_guard_lifted():
        return _decoded(_opened(data, max_pixels), reduce_to)


def open_image(source: str | Path | bytes, max_pixels: int, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode upright (EXIF) and RGB, so a broken file fails at scan time rather than mid-training.

    `reduce_to` (w, h): a JPEG may come back smaller, though never below it in either side (the caller resizes
    anyway); a scaled JPEG decode skips most of the inverse DCT and the full-size pixels: about 2x faster on camera photos.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return to_rgb(open_upright(data, max_pixels, reduce_to))


def jpeg_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """A JPEG's full upright size from its header alone (a tenth of a millisecond), so a scan can pick its decode scale.

    None for other formats: they decode at full size anyway (a PNG's EXIF may even follow its pixels).
    """
    with _pil_pixel_guard_lifted():
        image = _opened(data, max_pixels)
        if image.format not in JPEG_FORMATS:
            return None
        try:
            return upright_size(image)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise UnreadableImage(f"truncated or corrupt image ({error})") from None


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """PIL clips 16-bit values to 255 (mid-grey turns white); keep the top 8 bits instead.

    Mode I (32-bit int, what some decoders give 16-bit files) is read as 16-bit unless its values need more bits.
    """
    values = np.asarray(image).astype(np.int64).clip(min=0)
    bits = 16 if image.mode in SIXTEEN_BIT_MODES else max(16, int(values.max(initial=0)).bit_length())
    return Image.fromarray((values >> (bits - 8)).astype(np.uint8))


def _float_to_l(image: Image.Image) -> Image.Image:
    """Float images come as 0..1 or 0..255; scale the former so they do not turn black."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(values.round().clip(0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB without inverting or losing thin lines; transparency becomes white paper.

    Drawings on transparent sheets store black (0, 0, 0, 0) as background, so dropping alpha would invert them.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        image = _sixteen_bit_to_l(image)
    elif image.mode == "F":
        image = _float_to_l(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        sheet = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", sheet.size, (*WHITE, 255)), sheet).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize(image: Image.Image, size: tuple[int, int], kind: str) -> Image.Image:
    """Photos: LANCZOS. Drawings: BOX (area average) when shrinking, BICUBIC when enlarging.

    BOX darkens a 1-px line by its exact coverage whatever its position (191 at 4x, 223 at 8x on white) and
    never rings; LANCZOS/BICUBIC keep it fainter at unlucky positions and overshoot, NEAREST can drop it.
    """
    if kind == "drawing":
        shrinking = size[0] <= image.width and size[1] <= image.height
        return image.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return image.resize(size, Image.Resampling.LANCZOS)


def _tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Evenly spread starts from 0 to length - tile whose gaps never exceed the stride `overlap` allows."""
    if length == tile:
        return [0]
    max_stride = max(1, int(tile * (1.0 - overlap)))
    count = -(-(length - tile) // max_stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_boxes(width: int, height: int, tile: tuple[int, int], overlap: float) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) native-resolution tiles covering the image, row by row; [] if it is smaller than a tile."""
    tile_width, tile_height = tile
    if width < tile_width or height < tile_height:
        return []
    return [
        (left, top, left + tile_width, top + tile_height)
        for top in _tile_starts(height, tile_height, overlap)
        for left in _tile_starts(width, tile_width, overlap)
    ]


def possible_augmentations(kind: str, size: tuple[int, int], flip: bool, rotate: bool) -> list[str]:
    """Every op `choose_augmentation` can return for an image of this kind and size (the latent cache encodes each)."""
    if kind == "photo":
        return ["", "flip"] if flip else [""]
    if not rotate:
        return [""]
    return ["", "rot90", "rot180", "rot270"] if size[0] == size[1] else ["", "rot180"]


def choose_augmentation(kind: str, size: tuple[int, int], flip: bool, rotate: bool, rng: random.Random) -> str:
    """Photos may be mirrored (p=0.5); drawings never are (text, north arrows), only rotated in ways that keep their shape.

    Exactly one draw from `rng` when there is a choice, none otherwise, so the sequence is reproducible.
    """
    ops = possible_augmentations(kind, size, flip, rotate)
    if len(ops) == 1:
        return ""
    if len(ops) == 2:
        return ops[1] if rng.random() < 0.5 else ""
    return rng.choice(ops)


def apply_augmentation(image: Image.Image, op: str) -> Image.Image:
    """Apply an op from `choose_augmentation` ("" leaves the image as it is); rotations are counter-clockwise."""
    if op == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if op in ROTATIONS:
        return image.transpose(ROTATIONS[op])
    if op:
        raise ValueError(f"unknown augmentation {op!r}")
    return image


def to_tensor(image: Image.Image):
    """HWC uint8 RGB -> CHW float32 in [-1, 1], the VAE's input range."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def content_hash(data: bytes) -> str:
    """sha256 of the file bytes: cache entries follow the content, not the file name."""
    return hashlib.sha256(data).hexdigest()
