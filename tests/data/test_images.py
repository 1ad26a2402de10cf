"""Opening, converting, resizing, tiling and augmenting images, against the hostile folder in tests/nasty_images.py."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from nasty_images import aspect_class
from PIL import Image, ImageDraw, ImageOps

from archdiff.data.images import (
    UnreadableImage,
    apply_augmentation,
    choose_augmentation,
    content_hash,
    open_image,
    possible_augmentations,
    resize,
    tile_boxes,
    to_rgb,
    to_tensor,
)

LIMIT = 10**8


def augment(image, kind, flip, rotate, rng):
    """What a training step does to an image: choose the change, then apply it."""
    op = choose_augmentation(kind, image.size, flip, rotate, rng)
    return apply_augmentation(image, op), op


R = Image.Resampling


def close(actual, expected, tolerance: int) -> bool:
    return max(abs(a - e) for a, e in zip(actual, expected, strict=True)) <= tolerance


def tolerance(name: str) -> int:
    """PNG is lossless (alpha compositing may round by one); JPEG moves colours a little."""
    return 24 if name.endswith(".jpg") else 2


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no pixel data: a decoder would allocate first, then fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- opening


def test_every_valid_file_opens_upright_rgb_with_known_pixels(nasty_folder):
    root, info = nasty_folder
    for name, aspect in info["valid"].items():
        image = open_image(root / name, LIMIT)
        assert image.mode == "RGB", name
        assert aspect_class(*image.size) == aspect, name
        for point, expected in info["probes"][name]:
            assert close(image.getpixel(point), expected, tolerance(name)), (name, point, image.getpixel(point), expected)


def test_the_folder_really_is_nasty_for_plain_pil(nasty_folder):
    """Plain `Image.open(...).convert("RGB")` gets these wrong, so the test above checks real handling."""
    root, info = nasty_folder
    for name in ("plan_wide_palette_transparent.png", "plan_square_rgba.png", "plan_tall_16bit.png", "photo_tall_exif6.jpg"):
        with Image.open(root / name) as raw:
            naive = raw.convert("RGB")
        wrong_shape = aspect_class(*naive.size) != info["valid"][name]
        assert wrong_shape or not all(close(naive.getpixel(p), e, tolerance(name)) for p, e in info["probes"][name]), name


def test_metadata_lists_every_file_with_caption_and_kind(nasty_folder):
    root, info = nasty_folder
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert {row["file_name"] for row in rows} == set(info["valid"]) | set(info["broken"])
    assert {p.name for p in root.iterdir()} == {row["file_name"] for row in rows} | {"metadata.jsonl"}
    kinds = {row["file_name"]: row["kind"] for row in rows}
    assert all(kinds[name] == "drawing" for name in info["drawings"]) and all(kinds[name] == "photo" for name in info["photos"])
    assert all(row["text"] for row in rows)
    aspects = Counter(info["valid"].values())
    assert min(aspects["wide"], aspects["square"], aspects["tall"]) >= 3


def test_broken_files_raise_a_short_reason(nasty_folder):
    root, info = nasty_folder
    for name, reason in info["broken"].items():
        with pytest.raises(UnreadableImage) as caught:
            open_image(root / name, LIMIT)
        assert str(caught.value).startswith(reason), (name, str(caught.value))
    with pytest.raises(UnreadableImage, match=r"^truncated or corrupt image \(image file is truncated"):
        open_image((root / "broken_truncated.png").read_bytes(), LIMIT)
    with pytest.raises(UnreadableImage, match="^not an image$"):
        open_image(b"plan.dxf is not a raster image", LIMIT)


def test_pixel_limit_is_checked_from_the_header_before_decoding(nasty_folder):
    root, _ = nasty_folder
    # the truncated file fails only when decoded: the pixel message proves the check came first
    with pytest.raises(UnreadableImage, match=r"^128x128 = 16384 pixels, over data.max_pixels \(16383\)$"):
        open_image(root / "broken_truncated.png", 16_383)
    # a bomb header past twice PIL's own limit: PIL's guard is lifted, ours answers, nothing is allocated
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(UnreadableImage, match=r"^12000x15000 = 180000000 pixels, over data.max_pixels \(150000000\)$"):
        open_image(png_header_only(12_000, 15_000), 150_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_our_limit_replaces_pils_guard_and_pil_state_is_restored(nasty_folder, monkeypatch):
    root, _ = nasty_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse a 128x128 image
    assert open_image(root / "plan_square_north.png", LIMIT).size == (128, 128)
    with pytest.raises(UnreadableImage):
        open_image(root / "broken_empty.png", LIMIT)
    assert Image.MAX_IMAGE_PIXELS == 1000


# --------------------------------------------------------------------------- modes

SIZE = (16, 16)
LINE_X, GREY_AT = 5, (10, 10)


def _reference_l() -> Image.Image:
    """White paper, a black 1-px vertical line at x=5, one mid-grey (128) pixel."""
    image = Image.new("L", SIZE, 255)
    ImageDraw.Draw(image).line((LINE_X, 0, LINE_X, SIZE[1] - 1), fill=0)
    image.putpixel(GREY_AT, 128)
    return image


def _sheet(mode: str) -> Image.Image:
    """The reference as black ink (alpha = ink darkness) on a fully transparent black sheet."""
    ink = np.asarray(_reference_l())
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = 255 - ink
    return Image.fromarray(rgba).convert(mode)


def _palette_sheet() -> Image.Image:
    """PA: every index black, the drawing only in the alpha band."""
    image = Image.new("P", SIZE, 0)
    image.putpalette([0, 0, 0])
    image = image.convert("PA")
    image.putalpha(_sheet("LA").getchannel("A"))
    return image


def _sixteen_bit(mode: str) -> Image.Image:
    values = np.asarray(_reference_l()).astype(np.uint32) * 257  # 255 -> 65535, 128 -> 0x8080
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    return Image.frombytes(mode, SIZE, values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())


def _palette(transparent: bool) -> Image.Image:
    indices = np.asarray(_reference_l()).copy()
    indices = np.select([indices == 255, indices == 0], [0, 1], 2).astype(np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette([0, 0, 0, 0, 0, 0, 128, 128, 128] if transparent else [255, 255, 255, 0, 0, 0, 128, 128, 128])
    if transparent:
        image.info["transparency"] = 0  # index 0 is black in the palette, transparent on the sheet
    return image


MODES = {
    "1": lambda: _reference_l().point(lambda v: 255 if v > 200 else 0).convert("1"),
    "L": _reference_l,
    "P": lambda: _palette(False),
    "P+transparency": lambda: _palette(True),
    "LA": lambda: _sheet("LA"),
    "PA": _palette_sheet,
    "RGBA": lambda: _sheet("RGBA"),
    "I;16": lambda: _sixteen_bit("I;16"),
    "I;16B": lambda: _sixteen_bit("I;16B"),
    "I": lambda: _sixteen_bit("I"),
    "F": lambda: Image.fromarray(np.asarray(_reference_l(), np.float32) / 255.0),
    "CMYK": lambda: _reference_l().convert("RGB").convert("CMYK"),
    "YCbCr": lambda: _reference_l().convert("RGB").convert("YCbCr"),
    "RGBX": lambda: _reference_l().convert("RGB").convert("RGBX"),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_without_inverting_or_losing_the_line(mode):
    source = MODES[mode]()
    assert source.mode == mode.split("+")[0]
    image = to_rgb(source)
    assert image.mode == "RGB"
    assert close(image.getpixel((0, 0)), (255, 255, 255), 2), image.getpixel((0, 0))
    assert all(close(image.getpixel((LINE_X, y)), (0, 0, 0), 2) for y in range(SIZE[1]))
    if mode != "1":
        assert close(image.getpixel(GREY_AT), (128, 128, 128), 2), image.getpixel(GREY_AT)


def test_sixteen_bit_keeps_the_top_byte_rather_than_clipping():
    """PIL's own convert clips 16-bit mid-grey to white; to_rgb scales by the bit depth (>> 8)."""
    source = _sixteen_bit("I;16")
    assert source.convert("L").getpixel(GREY_AT) == 255
    assert to_rgb(source).getpixel(GREY_AT) == (0x8080 >> 8,) * 3


def test_transparent_sheet_is_white_paper_where_pil_would_give_black():
    sheet = _sheet("RGBA")
    assert sheet.convert("RGB").getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(sheet).getpixel((0, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------- resize


def line_sheet(paper: int = 255, offset: int = 0) -> Image.Image:
    """A 256x64 sheet with one 1-px black vertical line at x = 128 + offset."""
    values = np.full((64, 256), paper, np.uint8)
    values[:, 128 + offset] = 0
    return Image.fromarray(values).convert("RGB")


def faintest_line(factor: int, method) -> int:
    """The line's darkest output value at its worst sub-pixel position (higher = fainter; 255 = gone)."""
    darkest = []
    for offset in range(factor):
        out = method(line_sheet(offset=offset), (256 // factor, 64 // factor))
        darkest.append(int(np.asarray(out).min()))
    return max(darkest)


def pil_filter(resample):
    return lambda image, size: image.resize(size, resample)


def drawing(image, size):
    return resize(image, size, "drawing")


def test_drawing_downscale_keeps_a_one_pixel_line_where_other_filters_fade_or_drop_it():
    # measured: BOX 191 at 4x, 223 at 8x, whatever the line's position; LANCZOS 206/233, BICUBIC 209/234; NEAREST loses it
    assert faintest_line(4, drawing) == faintest_line(4, pil_filter(R.BOX)) == 191
    assert faintest_line(8, drawing) == faintest_line(8, pil_filter(R.BOX)) == 223
    for factor in (4, 8):
        assert faintest_line(factor, drawing) < faintest_line(factor, pil_filter(R.LANCZOS))
        assert faintest_line(factor, drawing) < faintest_line(factor, pil_filter(R.BICUBIC))
        assert faintest_line(factor, pil_filter(R.NEAREST)) == 255


def test_drawing_downscale_does_not_ring_on_off_white_paper():
    """LANCZOS overshoots next to a line (paper brighter than paper); the area average stays within the input's range."""
    sheet = line_sheet(paper=230)
    assert np.asarray(drawing(sheet, (64, 16))).max() == 230
    assert np.asarray(sheet.resize((64, 16), R.LANCZOS)).max() > 230


def test_upscaling_a_drawing_keeps_dark_on_white_and_photos_use_lanczos():
    big = np.asarray(drawing(line_sheet(), (512, 128)))[:, :, 0]
    assert big.min() < 64 and big[:, :200].max() == 255 and big[:, 300:].max() == 255
    photo = line_sheet(paper=200)
    assert resize(photo, (64, 16), "photo").tobytes() == photo.resize((64, 16), R.LANCZOS).tobytes()


# --------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [(1000, 600, (256, 256), 0.25), (513, 256, (256, 256), 0.5), (2048, 700, (512, 320), 0.1), (300, 300, (100, 150), 0.0)],
)
def test_tiles_cover_the_image_at_native_size_with_enough_overlap(width, height, tile, overlap):
    boxes = tile_boxes(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for left, top, right, bottom in boxes:
        assert (right - left, bottom - top) == tile and 0 <= left and 0 <= top and right <= width and bottom <= height
        covered[top:bottom, left:right] = True
    assert covered.all()
    lefts, tops = sorted({b[0] for b in boxes}), sorted({b[1] for b in boxes})
    assert len(boxes) == len(lefts) * len(tops)
    for starts, side, length in ((lefts, tile[0], width), (tops, tile[1], height)):
        assert starts[0] == 0 and starts[-1] + side == length
        steps = np.diff(starts)
        assert all(side - step >= overlap * side for step in steps)
        assert len(steps) == 0 or steps.max() - steps.min() <= 1  # evenly spread


def test_tiles_for_an_image_the_size_of_a_tile_or_smaller():
    assert tile_boxes(256, 256, (256, 256), 0.25) == [(0, 0, 256, 256)]
    assert tile_boxes(200, 600, (256, 256), 0.25) == []
    assert tile_boxes(600, 200, (256, 256), 0.25) == []


# --------------------------------------------------------------------------- augmentation


def test_a_drawing_with_text_is_never_mirrored(nasty_folder):
    root, info = nasty_folder
    original = open_image(root / info["text_drawing"], LIMIT)
    mirrored = ImageOps.mirror(original).tobytes()
    rotations = {op: original.rotate(angle).tobytes() for op, angle in (("", 0), ("rot90", 90), ("rot180", 180), ("rot270", 270))}
    assert mirrored not in rotations.values()
    rng, seen = random.Random(0), []
    for _ in range(200):
        image, op = augment(original, "drawing", flip=True, rotate=True, rng=rng)
        assert image.tobytes() != mirrored
        assert image.tobytes() == rotations[op]
        seen.append(op)
    assert all(seen.count(op) >= 25 for op in rotations)  # square: the four rotations uniformly, ~50 each


def test_a_non_square_drawing_only_turns_half_way_and_keeps_its_shape(nasty_folder):
    root, _ = nasty_folder
    original = open_image(root / "plan_wide_greyscale.png", LIMIT)
    rng = random.Random(1)
    results = [augment(original, "drawing", flip=True, rotate=True, rng=rng) for _ in range(100)]
    assert {op for _, op in results} == {"", "rot180"} == set(possible_augmentations("drawing", original.size, True, True))
    assert all(image.size == original.size for image, _ in results)
    assert all(image.tobytes() == original.rotate(180).tobytes() for image, op in results if op == "rot180")


def test_a_photo_is_mirrored_about_half_the_time_and_never_rotated(nasty_folder):
    root, _ = nasty_folder
    original = open_image(root / "photo_wide_rgb.jpg", LIMIT)
    rng = random.Random(2)
    results = [augment(original, "photo", flip=True, rotate=True, rng=rng) for _ in range(200)]
    flips = [image for image, op in results if op == "flip"]
    assert 70 <= len(flips) <= 130
    assert all(image.tobytes() == ImageOps.mirror(original).tobytes() for image in flips)
    assert all(image is original for image, op in results if op == "")


def test_augmentation_is_off_when_disabled_and_reproducible_from_the_seed(nasty_folder):
    root, info = nasty_folder
    drawing_image = open_image(root / info["text_drawing"], LIMIT)
    assert {augment(drawing_image, "drawing", True, False, random.Random(s))[1] for s in range(50)} == {""}
    assert {augment(drawing_image, "photo", False, True, random.Random(s))[1] for s in range(50)} == {""}
    rng_a, rng_b = random.Random(7), random.Random(7)
    assert [augment(drawing_image, "drawing", True, True, rng_a)[1] for _ in range(20)] == [
        augment(drawing_image, "drawing", True, True, rng_b)[1] for _ in range(20)
    ]


# --------------------------------------------------------------------------- tensors and hashes


def test_to_tensor_is_chw_float_in_minus_one_to_one():
    image = Image.new("RGB", (3, 2), (255, 255, 255))
    image.putpixel((0, 0), (255, 0, 0))
    image.putpixel((2, 1), (0, 0, 0))
    tensor = to_tensor(image)
    assert tuple(tensor.shape) == (3, 2, 3) and str(tensor.dtype) == "torch.float32"
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    assert tensor[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert tensor[:, 1, 2].tolist() == [-1.0, -1.0, -1.0]


def test_content_hash_is_the_sha256_of_the_file_bytes(nasty_folder):
    root, _ = nasty_folder
    data = (root / "plan_square_north.png").read_bytes()
    assert content_hash(data) == hashlib.sha256(data).hexdigest()
    assert content_hash(data) != content_hash((root / "plan_square_1bit.png").read_bytes())


def test_heic_bytes_under_any_name_get_the_pillow_heif_hint(monkeypatch):
    import archdiff.data.images as images

    monkeypatch.setattr(images, "heif_available", lambda: False)
    with pytest.raises(images.HeifUnsupported, match="pip install pillow-heif"):
        images.open_image(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(16), 10**6)
