"""What the two generators share: box and colour types, a half-open fill, plurals, and the seeded writer.

The writer is where determinism is kept: one generator per set, file-name order, ASCII JSON, and PNGs
without a timestamp.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive


def generate(
    out_dir: Path, prefix: str, kind: str, count: int, seed: int, draw: Callable[[random.Random], tuple[str, dict, Image.Image]]
) -> None:
    """Draw ``count`` items from one generator seeded with ``seed`` and write them as ``<prefix>_NNN.png``.

    ``draw`` returns (caption, the set's own metadata columns, image); every row starts with the
    imagefolder's ``file_name`` and ``text``, then ``kind``.
    """
    rng = random.Random(seed)
    items = []
    for index in range(count):
        caption, columns, image = draw(rng)
        items.append(({"file_name": f"{prefix}_{index:03d}.png", "text": caption, "kind": kind, **columns}, image))
    _write_dataset(Path(out_dir), prefix, items)


def _write_dataset(out_dir: Path, prefix: str, items: list[tuple[dict, Image.Image]]) -> None:
    """Write images and an HF imagefolder ``metadata.jsonl`` in file-name order.

    Earlier ``<prefix>_*.png`` files are removed first so a smaller ``count``
    leaves no stale images behind. PIL writes no timestamp chunk, so the same
    pixels give the same bytes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out_dir.glob(f"{prefix}_*.png")):
        stale.unlink()
    lines = []
    for record, image in sorted(items, key=lambda item: item[0]["file_name"]):
        image.save(out_dir / record["file_name"], format="PNG", optimize=True)
        lines.append(json.dumps(record, ensure_ascii=True))
    (out_dir / "metadata.jsonl").write_bytes(("\n".join(lines) + "\n").encode("ascii"))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fill(draw: ImageDraw.ImageDraw, box: Box, colour: RGB) -> None:
    """Fill a half-open box; PIL's rectangle is inclusive, and empty boxes are skipped."""
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
