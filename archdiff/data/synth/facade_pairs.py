"""Paired facades for ControlNet (sketch -> render): a rendered elevation and its line drawing, from one set of parameters.

The render is the ``facades`` set's drawing. The line drawing traces the same boxes (``facade_openings``,
``balcony_box`` and the roof outline the render returns) on the render's outermost pixels of each shape,
so every line lies on a colour edge of the render and the drawing -> render mapping is exactly learnable.
Rows carry the facades set's caption and columns, plus ``control``: the drawing's path, the column a
ControlNet recipe reads (``control_column``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from archdiff.data.synth.common import Box, fill
from archdiff.data.synth.facades import (
    Facade,
    balcony_box,
    facade_caption,
    facade_columns,
    facade_openings,
    render_facade,
    sample_facade,
)
from archdiff.errors import UserError

INK, PAPER = (0, 0, 0), (255, 255, 255)
PAIR_SIZE = (256, 256)
SIZE_RANGE = (128, 2048)


def _outline(draw: ImageDraw.ImageDraw, box: Box) -> None:
    """A 1 px outline on the outermost pixels of a half-open box: exactly where the render's fill ends."""
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=INK)


def draw_elevation(f: Facade, roof: list[tuple[int, int]]) -> Image.Image:
    """The facade as an elevation line drawing: black outlines on white, no fills, no text.

    Roof, wall, a ground line, each window with its glazing bars, the door and each balcony, all 1 px
    (the vertical glazing bar is the render's 2 px bar).
    """
    image = Image.new("RGB", (f.width, f.height), PAPER)
    draw = ImageDraw.Draw(image)
    draw.polygon(roof, outline=INK)
    _outline(draw, f.wall)
    draw.line((0, f.wall[3], f.width - 1, f.wall[3]), fill=INK)
    for opening in facade_openings(f):
        x0, y0, x1, y1 = opening.box
        _outline(draw, opening.box)
        if opening.door:
            continue
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        fill(draw, (cx - 1, y0, cx + 1, y1), INK)
        fill(draw, (x0, cy, x1, cy + 1), INK)
        if opening.balcony:
            _outline(draw, balcony_box(f, opening.box))
    return image


def _check_size(size: tuple[int, int] | None) -> None:
    low, high = SIZE_RANGE
    if size is not None and not all(low <= side <= high for side in size):
        raise UserError(f"facade pair size {size[0]}x{size[1]}: each side must be {low} to {high} pixels")


def generate_facade_pairs(out_dir: Path, count: int = 32, seed: int = 0, size: tuple[int, int] | None = PAIR_SIZE) -> None:
    """Write ``count`` pairs, ``images/facade_NNN.png`` (render) and ``controls/facade_NNN.png`` (drawing), and their rows.

    ``size`` is every pair's (width, height); None draws the facades set's mix of shapes. Each pair takes
    from the seed in the facades set's order (parameters, pixels, caption); the drawing takes nothing.
    Earlier ``facade_*.png`` files are removed first, and PNGs carry no timestamp, so a rerun gives the same bytes.
    """
    _check_size(size)
    out_dir = Path(out_dir)
    for folder in ("images", "controls"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        for stale in sorted((out_dir / folder).glob("facade_*.png")):
            stale.unlink()
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        facade = sample_facade(rng, size)
        image, roof = render_facade(facade, rng)
        name = f"facade_{index:03d}.png"
        row = {"file_name": f"images/{name}", "control": f"controls/{name}", "text": facade_caption(facade, rng), "kind": "photo"}
        image.save(out_dir / row["file_name"], format="PNG", optimize=True)
        draw_elevation(facade, roof).save(out_dir / row["control"], format="PNG", optimize=True)
        lines.append(json.dumps({**row, **facade_columns(facade)}, ensure_ascii=True))
    (out_dir / "metadata.jsonl").write_bytes(("\n".join(lines) + "\n").encode("ascii"))
