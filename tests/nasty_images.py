"""A deliberately hostile local image folder (an HF imagefolder) for the data tests.

Everything that has broken image pipelines in practice, small and seeded: 1-bit, palette (with a
transparent index whose colour is black), transparent RGBA sheets, 16-bit greyscale, CMYK JPEG, a JPEG
stored sideways with EXIF orientation 6, a drawing with mirror-sensitive text, a truncated PNG and an
empty file. Each valid file comes with probes: pixels whose colour after `open_image` is known.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDE, SQUARE, TALL = (256, 64), (128, 128), (64, 192)
SEED = 1234
PAPER, INK, RED, BLUE = (255, 255, 255), (0, 0, 0), (220, 30, 30), (0, 0, 255)
BRICK, MARKER = (150, 90, 60), (230, 20, 20)
GREY_16BIT = 0x8080  # 16-bit mid-grey: 128 after keeping the top 8 bits, 255 if naively clipped
HALF_ALPHA = 128  # black at this alpha over white paper is 255 * (255 - 128) / 255 ~ 127
ORIENTATION_TAG = 0x0112

Probe = tuple[tuple[int, int], tuple[int, int, int]]  # (x, y) in the upright image, expected RGB


def aspect_class(width: int, height: int) -> str:
    """'wide', 'square' or 'tall': the folder's images are 4:1, 1:1 or 1:3, far from the 1.5 cut-offs."""
    ratio = width / height
    return "wide" if ratio >= 1.5 else "tall" if ratio <= 1 / 1.5 else "square"


def _plan(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random, ink) -> list[tuple[int, int]]:
    """Outer walls inset 8 px plus one seeded interior wall; returns points known to be on a wall."""
    width, height = size
    draw.rectangle((8, 8, width - 9, height - 9), outline=ink, width=2)
    x = rng.randint(width // 3, 2 * width // 3)
    draw.line((x, 8, x, height - 9), fill=ink, width=1)
    return [(8, height // 2), (x, height // 2)]


def _plan_probes(size: tuple[int, int], walls: list[tuple[int, int]]) -> list[Probe]:
    return [((3, 3), PAPER), ((size[0] - 4, size[1] - 4), PAPER)] + [(point, INK) for point in walls]


def plan_greyscale(path: Path, rng: random.Random) -> list[Probe]:
    image = Image.new("L", WIDE, 255)
    walls = _plan(ImageDraw.Draw(image), WIDE, rng, 0)
    image.save(path)
    return _plan_probes(WIDE, walls)


def plan_one_bit(path: Path, rng: random.Random) -> list[Probe]:
    image = Image.new("1", SQUARE, 1)
    walls = _plan(ImageDraw.Draw(image), SQUARE, rng, 0)
    image.save(path)
    return _plan_probes(SQUARE, walls)


def plan_palette(path: Path, rng: random.Random) -> list[Probe]:
    """Indices 0 white, 1 black, 2 red: a red door must stay red (not an index read as grey)."""
    image = Image.new("P", TALL, 0)
    image.putpalette([*PAPER, *INK, *RED])
    draw = ImageDraw.Draw(image)
    walls = _plan(draw, TALL, rng, 1)
    draw.rectangle((20, 150, 35, 165), fill=2)
    image.save(path)
    return _plan_probes(TALL, walls) + [((27, 157), RED)]


def plan_palette_transparent(path: Path, rng: random.Random) -> list[Probe]:
    """The transparent index 0 is black in the palette: dropping transparency would give a black sheet."""
    image = Image.new("P", WIDE, 0)
    image.putpalette([*INK, *INK, *BLUE])
    draw = ImageDraw.Draw(image)
    walls = _plan(draw, WIDE, rng, 1)
    draw.rectangle((200, 20, 215, 35), fill=2)
    image.save(path, transparency=0)
    return _plan_probes(WIDE, walls) + [((207, 27), BLUE)]


def plan_transparent_sheet(path: Path, rng: random.Random) -> list[Probe]:
    """Black lines on a transparent (0, 0, 0, 0) sheet, plus a half-transparent black hatch."""
    image = Image.new("RGBA", SQUARE, (*INK, 0))
    draw = ImageDraw.Draw(image)
    walls = _plan(draw, SQUARE, rng, (*INK, 255))
    draw.rectangle((90, 90, 110, 110), fill=(*INK, HALF_ALPHA))
    image.save(path)
    grey = round(255 * (255 - HALF_ALPHA) / 255)
    return _plan_probes(SQUARE, walls) + [((100, 100), (grey, grey, grey))]


def plan_sixteen_bit(path: Path, rng: random.Random) -> list[Probe]:
    """16-bit greyscale (I;16): white paper is 65535, walls 0, a hatch band at mid-grey."""
    image = Image.new("L", TALL, 255)
    walls = _plan(ImageDraw.Draw(image), TALL, rng, 0)
    values = np.asarray(image).astype(np.uint16) * 257
    values[100:120, 16:48] = GREY_16BIT
    Image.fromarray(values).save(path)
    mid = GREY_16BIT >> 8
    return _plan_probes(TALL, walls) + [((32, 110), (mid, mid, mid))]


def plan_north(path: Path, rng: random.Random) -> list[Probe]:
    """A drawing that looks wrong mirrored: a big 'F', the word NORTH and a north arrow."""
    image = Image.new("RGB", SQUARE, PAPER)
    draw = ImageDraw.Draw(image)
    draw.rectangle((16, 24, 27, 104), fill=INK)
    draw.rectangle((16, 24, 70, 35), fill=INK)
    draw.rectangle((16, 58, 56, 68), fill=INK)
    draw.polygon([(100, 16), (92, 44), (100, 38), (108, 44)], fill=INK)
    draw.text((74, 52), "NORTH", fill=INK, font=ImageFont.load_default(size=12))
    draw.line((rng.randint(76, 84), 112, 120, 112), fill=INK, width=1)
    image.save(path)
    return [((2, 2), PAPER), ((120, 2), PAPER), ((21, 100), INK), ((65, 30), INK)]


def _facade(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sky gradient over a brick wall with a row of dark windows, plus a little sensor noise."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.float64)
    sky = np.linspace(0, 1, height // 2)[:, None]
    pixels[: height // 2] = (np.array([90, 140, 220]) * (1 - sky) + np.array([200, 220, 240]) * sky)[:, None, :]
    pixels[height // 2 :] = BRICK
    for left in range(24, width - 16, 24):
        pixels[height // 2 + 4 : height // 2 + 14, left : left + 10] = (40, 45, 55)
    pixels += rng.normal(0, 2, pixels.shape)
    return pixels.round().clip(0, 255).astype(np.uint8)


def _facade_probes(size: tuple[int, int]) -> list[Probe]:
    width, height = size
    return [((width // 2, 2), (90, 140, 220)), ((8, height - 6), BRICK)]


def photo_cmyk(path: Path, rng: random.Random) -> list[Probe]:
    Image.fromarray(_facade(WIDE, np.random.default_rng(rng.randrange(2**32)))).convert("CMYK").save(path, quality=95)
    return _facade_probes(WIDE)


def photo_jpeg(size: tuple[int, int]) -> Callable[[Path, random.Random], list[Probe]]:
    def write(path: Path, rng: random.Random) -> list[Probe]:
        Image.fromarray(_facade(size, np.random.default_rng(rng.randrange(2**32)))).save(path, quality=95)
        return _facade_probes(size)

    return write


def photo_png_tall(path: Path, rng: random.Random) -> list[Probe]:
    Image.fromarray(_facade(TALL, np.random.default_rng(rng.randrange(2**32)))).save(path)
    return _facade_probes(TALL)


def photo_sideways(path: Path, rng: random.Random) -> list[Probe]:
    """Stored 192x64 (camera held sideways) with EXIF orientation 6: upright it is 64x192, tall.

    A red marker at the stored top-left must end up at the upright top-right.
    """
    stored = Image.fromarray(_facade((192, 64), np.random.default_rng(rng.randrange(2**32))))
    ImageDraw.Draw(stored).rectangle((0, 0, 23, 23), fill=MARKER)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    stored.save(path, quality=95, exif=exif)
    return [((64 - 1 - 12, 12), MARKER), ((5, 96), BRICK)]


def truncated_png(path: Path, rng: random.Random) -> None:
    """A valid noisy PNG cut in half: the header reads fine, the pixel data ends early."""
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_file(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


# file name, kind, caption, writer
VALID = [
    ("plan_wide_greyscale.png", "drawing", "floor plan, greyscale", plan_greyscale),
    ("plan_wide_palette_transparent.png", "drawing", "floor plan on a transparent sheet, palette", plan_palette_transparent),
    ("photo_wide_cmyk.jpg", "photo", "brick facade, CMYK print scan", photo_cmyk),
    ("photo_wide_rgb.jpg", "photo", "brick facade, street view", photo_jpeg(WIDE)),
    ("plan_square_1bit.png", "drawing", "floor plan, 1-bit scan", plan_one_bit),
    ("plan_square_rgba.png", "drawing", "floor plan on a transparent sheet", plan_transparent_sheet),
    ("plan_square_north.png", "drawing", "site plan with north arrow", plan_north),
    ("photo_square_rgb.jpg", "photo", "brick facade, square crop", photo_jpeg(SQUARE)),
    ("plan_tall_palette.png", "drawing", "floor plan, palette with a red door", plan_palette),
    ("plan_tall_16bit.png", "drawing", "floor plan, 16-bit greyscale scan", plan_sixteen_bit),
    ("photo_tall_exif6.jpg", "photo", "brick tower, phone photo held sideways", photo_sideways),
    ("photo_tall_rgb.png", "photo", "brick tower", photo_png_tall),
]
BROKEN = [
    ("broken_truncated.png", "photo", "brick facade, download cut short", truncated_png, "truncated or corrupt image"),
    ("broken_empty.png", "drawing", "floor plan, zero-byte file", empty_file, "empty file"),
]


def make_nasty_folder(root: Path) -> dict:
    """Write the folder under `root` and describe it.

    Returns {"valid": {name: aspect class upright}, "broken": {name: start of the expected reason},
    "drawings"/"photos": [valid names by kind], "modes": {name: PIL mode as stored},
    "probes": {name: [((x, y), rgb)]}, "text_drawing": name of the mirror-sensitive drawing}.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    info: dict = {"valid": {}, "broken": {}, "drawings": [], "photos": [], "modes": {}, "probes": {}}
    rows = []
    for name, kind, text, write in VALID:
        info["probes"][name] = write(root / name, rng)
        with Image.open(root / name) as image:
            info["modes"][name] = image.mode
            width, height = image.size[::-1] if image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8) else image.size
        info["valid"][name] = aspect_class(width, height)
        info["drawings" if kind == "drawing" else "photos"].append(name)
        rows.append({"file_name": name, "text": text, "kind": kind})
    for name, kind, text, write, reason in BROKEN:
        write(root / name, rng)
        info["broken"][name] = reason
        rows.append({"file_name": name, "text": text, "kind": kind})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    info["text_drawing"] = "plan_square_north.png"
    return info
