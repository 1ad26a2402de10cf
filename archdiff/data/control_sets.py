"""`archdiff data controls`: turn an image set into a paired folder ControlNet training reads.

    OUT/images/<name>          the target image, its original bytes (hard-linked when the file system allows)
    OUT/controls/<stem>.png    its control map, at the size the image was extracted at (long side <= max_side)
    OUT/metadata.jsonl         the source's metadata row + "file_name": "images/<name>", "control": "controls/<stem>.png"
    OUT/contact_sheet.png      image | control pairs, to check the maps by eye before training

Everything is written into a hidden folder beside OUT and renamed into place at the end, so a Ctrl-C or
a full disk never leaves a metadata.jsonl naming files that do not exist, nor a half-replaced OUT.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from archdiff.config.schema import DataConfig
from archdiff.data.catalog import Catalog, ImageRecord, build_catalog
from archdiff.data.sources import IMAGE_SUFFIXES, Skipped
from archdiff.errors import UserError

IMAGES_DIR = "images"
CONTROLS_DIR = "controls"
METADATA_FILE = "metadata.jsonl"
SHEET_FILE = "contact_sheet.png"
SHEET_PAIRS = 24  # image | control pairs on the contact sheet, spread evenly over the set
SHEET_COLUMNS = 3  # pairs per row
UNSAFE_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]+')


@dataclass
class ControlSet:
    folder: Path
    written: int
    skipped: list[Skipped]  # the catalog's, plus images that failed when read again here
    sheet: Path


def default_output(data: str, control_type: str) -> Path:
    """`<SRC folder or set name>-<type>` in the current folder."""
    from archdiff.data.inspect.picks import safe_name

    return Path(f"{safe_name(data)}-{control_type}")


def is_control_set(folder: Path) -> bool:
    return (folder / METADATA_FILE).is_file() and (folder / CONTROLS_DIR).is_dir()


def check_control_output(output: Path, data: str, overwrite: bool) -> None:
    """OUT can be written and replaced: --overwrite only replaces an earlier control set, never any other folder,
    and OUT may not hold SRC nor lie inside it (the next scan of SRC would read the copies)."""
    from archdiff.outputs import check_output

    check_output(output, "--output", folder=True)
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"--output '{output}' exists and is not empty; pass --overwrite to replace it, or choose another -o")
        if not is_control_set(output):
            raise UserError(
                f"--output '{output}' is not a folder `data controls` wrote (no {METADATA_FILE} and {CONTROLS_DIR}/); "
                "--overwrite replaces only those: choose another -o"
            )
    source = Path(data).expanduser()
    if source.is_dir():
        out, src = output.resolve(), source.resolve()
        if out == src or out.is_relative_to(src) or src.is_relative_to(out):
            raise UserError(f"--output '{output}' overlaps the data folder '{data}'; write the control set outside it")


def _target_name(record: ImageRecord, data: bytes, used: set[str]) -> str:
    """A safe file name for the image, with an image suffix (a Hub row's bytes get one from their format), whose stem
    no other image has, case-insensitively, since each stem names a control PNG."""
    path = Path(UNSAFE_NAME.sub("_", Path(record.name).name).lstrip(".") or "image")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        try:
            image_format = Image.open(io.BytesIO(data)).format or "PNG"
        except (OSError, ValueError):
            image_format = "PNG"
        path = path.with_name(path.name + {"JPEG": ".jpg", "TIFF": ".tif"}.get(image_format, f".{image_format.lower()}"))
    stem, number = path.stem, 1
    while stem.lower() in used:
        number += 1
        stem = f"{path.stem}-{number}"
    used.add(stem.lower())
    return stem + path.suffix


def _place_image(value: dict[str, Any], data: bytes, target: Path) -> None:
    """The original bytes at `target`: a hard link to the file when possible (no second copy on disk), else a copy."""
    if value.get("bytes") is None and value.get("path"):
        try:
            os.link(value["path"], target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    target.write_bytes(data)


def extraction_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size controls are extracted at: the image's own, or shrunk so its long side is `max_side` (never enlarged)."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _row(record: ImageRecord, catalog: Catalog, image_name: str, control_name: str) -> dict[str, Any]:
    """The source's metadata, with the caption and kind as this source reads them (a manifest may name other columns)."""
    from archdiff.data.captions import base_caption

    source = catalog.sources[record.source]
    fields = {key: value for key, value in record.fields.items() if key not in ("file_name", "control")}
    return {
        **fields,
        "text": base_caption(source.caption, record.fields, None),
        "kind": record.kind,
        "file_name": f"{IMAGES_DIR}/{image_name}",
        "control": f"{CONTROLS_DIR}/{control_name}",
    }


def _draw_sheet(pairs: list[tuple[str, Image.Image, Image.Image, str]], title: str, path: Path) -> None:
    """Image | control thumbnails side by side, with each image's name and extraction size."""
    from archdiff.data.inspect.labels import GAP, LINE_HEIGHT, fit_text, label_font
    from archdiff.data.inspect.sheet import CELL, FRAME, TITLE_HEIGHT, TITLE_SIZE, thumbnail

    pair_width = 2 * CELL + GAP // 2
    row_height = CELL + 2 * LINE_HEIGHT + GAP
    columns = max(1, min(SHEET_COLUMNS, len(pairs)))
    rows = max(1, -(-len(pairs) // columns))
    sheet = Image.new("RGB", (columns * pair_width + (columns + 1) * GAP, TITLE_HEIGHT + rows * row_height), "white")
    draw = ImageDraw.Draw(sheet)
    font, title_font = label_font(), label_font(TITLE_SIZE)
    draw.text(
        (GAP, (TITLE_HEIGHT - TITLE_SIZE) // 2), fit_text(title, title_font, sheet.width - 2 * GAP), fill="black", font=title_font
    )
    for slot, (name, image, control, kind) in enumerate(pairs):
        left = GAP + (slot % columns) * (pair_width + GAP)
        top = TITLE_HEIGHT + (slot // columns) * row_height
        for offset, picture, picture_kind in ((0, image, kind), (CELL + GAP // 2, control, "drawing")):
            sheet.paste(thumbnail(picture, picture_kind), (left + offset, top))
            draw.rectangle((left + offset - 1, top - 1, left + offset + CELL, top + CELL), outline=FRAME)
        draw.text((left, top + CELL + 4), fit_text(name, font, pair_width), fill="black", font=font)
        size = f"{image.width}x{image.height}  {kind}"
        draw.text((left, top + CELL + 4 + LINE_HEIGHT), size, fill=(90, 90, 90), font=font)
    sheet.save(path)


def _swap_into_place(staging: Path, output: Path) -> None:
    """Rename the finished folder to OUT; an earlier control set there is moved aside first and then deleted."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp made it 0700; the files inside keep their own modes (links share the source's)
    if not output.exists():
        os.replace(staging, output)
        return
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
        os.replace(staging, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}-old-", dir=output.parent))
    os.replace(output, old / output.name)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def write_control_set(
    cfg: DataConfig,
    control_type: str,
    output: Path,
    *,
    canny_low: int = 100,
    canny_high: int = 200,
    max_side: int = 1024,
    depth_model: str | None = None,
) -> ControlSet:
    """Scan the data, extract a control for every usable image and write the paired folder (see the module docstring).

    `control_type` is one of CONTROL_TYPES' extractors, or DEPTH_TYPE with `depth_model` (a Hub id or folder).
    """
    from tqdm.auto import tqdm

    from archdiff.data import controls
    from archdiff.data.images import UnreadableImage, open_image, resize
    from archdiff.data.inspect.picks import spread
    from archdiff.run_files import staging_dir, write_text_atomic

    catalog = build_catalog(cfg)
    skipped = list(catalog.skipped)
    picks = set(spread(SHEET_PAIRS, len(catalog.records)))
    pairs, rows, used = [], [], set()
    with staging_dir(output.parent) as staging:
        (staging / IMAGES_DIR).mkdir()
        (staging / CONTROLS_DIR).mkdir()
        for index, record in enumerate(tqdm(catalog.records, desc=f"{control_type} controls", unit="img")):
            value = catalog.sources[record.source].dataset[record.row]["image"]
            try:
                data = catalog.image_bytes(record)
                image = open_image(data, cfg.max_pixels)
            except (UnreadableImage, OSError) as error:  # changed or removed since the scan
                skipped.append(Skipped(record.name, str(error)))
                continue
            size = extraction_size(image.width, image.height, max_side)
            if size != image.size:
                image = resize(image, size, record.kind)
            if control_type == controls.DEPTH_TYPE:
                control = controls.extract_depth(image, depth_model)
            else:
                control = controls.extract_control(image, control_type, canny_low=canny_low, canny_high=canny_high)
            image_name = _target_name(record, data, used)
            control_name = Path(image_name).stem + ".png"
            _place_image(value, data, staging / IMAGES_DIR / image_name)
            control.save(staging / CONTROLS_DIR / control_name)
            rows.append(_row(record, catalog, image_name, control_name))
            if index in picks:
                pairs.append((record.name, image, control, record.kind))
        if not rows:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
            raise UserError(f"no control written: every image was skipped ({reasons})")
        title = f"{control_type} controls: {len(rows)} pairs, {len(skipped)} skipped; {len(pairs)} shown (image | control)"
        _draw_sheet(pairs, title, staging / SHEET_FILE)
        write_text_atomic(
            staging / METADATA_FILE, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        )
        _swap_into_place(staging, output)
    return ControlSet(output, len(rows), skipped, output / SHEET_FILE)
