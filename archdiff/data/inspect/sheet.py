"""The contact sheet of `data inspect`: thumbnails spread evenly over the data, each labelled as training sees it."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from archdiff.data.inspect.labels import GAP, LINE_HEIGHT, fit_text, label_font, wrap_text
from archdiff.data.inspect.picks import spread
from archdiff.data.inspect.stats import Report

# Layout, px.
CELL = 256
COLUMNS = 6
TITLE_SIZE = 22
TITLE_HEIGHT = 52
CAPTION_LINES = 4
LABEL_HEIGHT = 6 + (2 + CAPTION_LINES) * LINE_HEIGHT  # name, size/kind/bucket, caption lines
ROW_HEIGHT = CELL + LABEL_HEIGHT + GAP
LETTERBOX = (236, 236, 236)  # grey behind thumbnails, so white paper shows where the image ends
FRAME = (200, 200, 200)


def thumbnail(image: Image.Image, kind: str) -> Image.Image:
    """The image scaled (up or down) to fit a CELL square, centred on a letterbox."""
    from archdiff.data.images import resize

    scale = CELL / max(image.size)
    fitted = resize(image, (max(1, round(image.width * scale)), max(1, round(image.height * scale))), kind)
    box = Image.new("RGB", (CELL, CELL), LETTERBOX)
    box.paste(fitted, ((CELL - fitted.width) // 2, (CELL - fitted.height) // 2))
    return box


def masked_view(catalog, record, image: Image.Image, max_pixels: int) -> Image.Image:
    """The image with what its loss mask ignores tinted red (unchanged without a mask)."""
    from archdiff.data.masks import mask_image, tinted

    if record.mask is None:
        return image
    size = (record.width, record.height)
    return tinted(image, mask_image(record.mask, lambda: catalog.image_bytes(record), size, record.kind, max_pixels))


def sheet_size(images: int) -> tuple[int, int]:
    columns = min(COLUMNS, images)
    rows = math.ceil(images / columns)
    return columns * CELL + (columns + 1) * GAP, TITLE_HEIGHT + rows * ROW_HEIGHT


def contact_sheet(report: Report, path: Path, count: int = 24) -> Path:
    """Up to `count` usable images, spread evenly, each with its name, size, kind, bucket and caption."""
    from archdiff.data.images import open_image

    catalog = report.catalog
    picks = spread(count, len(catalog.records))
    sheet = Image.new("RGB", sheet_size(len(picks)), "white")
    draw = ImageDraw.Draw(sheet)
    font, title_font = label_font(), label_font(TITLE_SIZE)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(r.kind for r in catalog.records).items()))
    title = (
        f"{report.label}: {len(catalog.records)} usable ({kinds}), {len(catalog.skipped)} skipped; "
        f"{len(picks)} shown; buckets at {report.config.resolution} px"
    )
    title = fit_text(title, title_font, sheet.width - 2 * GAP)
    draw.text((GAP, (TITLE_HEIGHT - TITLE_SIZE) // 2), title, fill="black", font=title_font)
    for slot, index in enumerate(picks):
        record = catalog.records[index]
        left = GAP + (slot % COLUMNS) * (CELL + GAP)
        top = TITLE_HEIGHT + (slot // COLUMNS) * ROW_HEIGHT
        image = open_image(catalog.image_bytes(record), report.config.max_pixels)
        sheet.paste(thumbnail(masked_view(catalog, record, image, report.config.max_pixels), record.kind), (left, top))
        draw.rectangle((left - 1, top - 1, left + CELL, top + CELL), outline=FRAME)  # white paper on a white sheet
        bucket = report.buckets[index]
        caption = wrap_text(report.captions[index] or "(empty caption)", font, CELL, CAPTION_LINES)
        lines = [
            (fit_text(record.name, font, CELL), "black"),
            (f"{record.width}x{record.height}  {record.kind}  bucket {bucket[0]}x{bucket[1]}", (90, 90, 90)),
            *((line, (50, 70, 120)) for line in caption),
        ]
        for number, (text, colour) in enumerate(lines):
            draw.text((left, top + CELL + 6 + number * LINE_HEIGHT), text, fill=colour, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
