"""Resolve each data source (bundled set, manifest, local folder, Hub id) and load it through HF `datasets`.

A source loads into a `datasets.Dataset` whose `image` column is left undecoded ({bytes, path}): images
are opened later, one by one, by the catalog, so a broken file is reported by name instead of failing
the whole load. Everything a folder holds that cannot become a training row is reported, never dropped.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archdiff.config.schema import CaptionConfig, SourceConfig
from archdiff.errors import UserError, first_line
from archdiff.hub_ids import is_hub_id
from archdiff.paths import bundled_datasets_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


@dataclass(frozen=True)
class Skipped:
    """A file or row that will not be trained on, and why: printed by every run and by `data inspect`."""

    name: str
    reason: str


@dataclass
class LoadedSource:
    config: SourceConfig
    label: str  # how messages name this source
    dataset: Any  # datasets.Dataset with an undecoded `image` column
    caption: CaptionConfig
    kind: str | None  # the source's kind, or None to read it per row
    skipped: list[Skipped] = field(default_factory=list)


def bundled_names() -> list[str]:
    root = bundled_datasets_dir()
    return sorted(p.name for p in root.iterdir() if (p / "metadata.jsonl").is_file()) if root.is_dir() else []


def load_source(config: SourceConfig, default_caption: CaptionConfig) -> LoadedSource:
    """Load one source; manifests fill in the Hub id, columns, kind and caption they document."""
    from archdiff.data.manifests import find_manifest

    caption, kind, split, image_column = config.caption or default_caption, config.kind, config.split, config.image_column
    path = Path(config.path).expanduser()
    skipped: list[Skipped] = []
    if path.is_dir():
        dataset, skipped = _load_local(path, split)
        label = str(path)
    elif config.path in bundled_names():
        dataset, skipped = _load_local(bundled_datasets_dir() / config.path, split)
        label = config.path
    elif manifest := find_manifest(config.path):
        caption = config.caption or manifest.caption
        kind = config.kind or manifest.kind
        split, image_column = manifest.split, manifest.image_column
        dataset = _load_hub(manifest.id, split, f"{config.path} ({manifest.id})")
        label = f"{config.path} ({manifest.id})"
    else:
        dataset = _load_hub(config.path, split, config.path)
        label = config.path

    if image_column not in dataset.column_names:
        raise UserError(f"data '{label}' has no image column '{image_column}' (columns: {', '.join(dataset.column_names)})")
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    from datasets import Image

    dataset = dataset.cast_column("image", Image(decode=False))
    _check_caption_columns(label, dataset.column_names, caption)
    return LoadedSource(config, label, dataset, caption, kind, skipped)


def _check_caption_columns(label: str, columns: list[str], caption: CaptionConfig) -> None:
    from archdiff.data.captions import caption_columns

    try:
        needed = caption_columns(caption)
    except ValueError as error:
        raise UserError(f"data.caption.template: {error}") from None
    missing = [name for name in needed if name not in columns]
    if missing:
        what = "caption template fields" if caption.template else "caption column"
        raise UserError(
            f"data '{label}' has no {what} {', '.join(repr(m) for m in missing)} (columns: {', '.join(columns)}); "
            "add metadata.jsonl rows with file_name and text, .txt captions next to the images, or set data.caption"
        )


# -- local folders ------------------------------------------------------------------------------


def _load_local(folder: Path, split: str) -> tuple[Any, list[Skipped]]:
    """A `save_to_disk` folder, a Hub-style repo folder (parquet/arrow files), or an image folder."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _load_saved(folder, split), []
    if any(folder.glob("*.parquet")) or any(folder.glob("data/*.parquet")) or any(folder.glob("data/*.arrow")):
        return _load_hub(str(folder), split, str(folder)), []
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"data folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    metadata = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if metadata:
        return _load_imagefolder(folder, metadata[0], images)
    return _load_sidecar(folder, images)


def _load_saved(folder: Path, split: str) -> Any:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise UserError(f"data '{folder}' has no split '{split}' (splits: {', '.join(dataset)})")
        dataset = dataset[split]
    return dataset


def _metadata_rows(metadata: Path) -> list[dict[str, Any]]:
    """The metadata file's rows, with a line-precise error for bad UTF-8 or JSON."""
    raw = metadata.read_bytes()
    lines = raw.splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{metadata}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    text = raw.decode("utf-8")
    if metadata.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{metadata}: line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or "file_name" not in row:
            raise UserError(f"{metadata}: line {number} has no file_name")
        rows.append(row)
    return rows


def _load_imagefolder(folder: Path, metadata: Path, images: list[Path]) -> tuple[Any, list[Skipped]]:
    """HF imagefolder, after checking what it would silently skip or refuse with a vague error."""
    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    root = folder.resolve()
    listed: set[Path] = set()
    for number, row in enumerate(_metadata_rows(metadata), start=1):
        name = str(row["file_name"])
        target = (folder / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(root):
            raise UserError(f"{metadata}: line {number}: file_name '{name}' points outside the data folder; refused")
        if not target.is_file():
            raise UserError(f"{metadata}: line {number}: file_name '{name}' does not exist")
        listed.add(target)
    skipped = [Skipped(str(p.relative_to(folder)), f"not listed in {metadata.name}") for p in images if p.resolve() not in listed]
    disable_progress_bar()  # its "Downloading data" bars would only mislead for a local folder
    try:
        dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    finally:
        enable_progress_bar()
    return dataset, skipped


def _load_sidecar(folder: Path, images: list[Path]) -> tuple[Any, list[Skipped]]:
    """Images with captions in same-stem .txt files (the kohya layout), as a `datasets.Dataset`."""
    from datasets import Dataset, Image

    rows: dict[str, list] = {"image": [], "text": [], "file_name": []}
    skipped = []
    for image in images:
        name = str(image.relative_to(folder))
        sidecar = image.with_suffix(".txt")
        caption = None
        if sidecar.is_file():
            try:
                caption = sidecar.read_bytes().decode("utf-8").strip()
            except UnicodeDecodeError as error:
                skipped.append(Skipped(name, f"caption {sidecar.name} is not valid UTF-8 ({error.reason} at byte {error.start})"))
                continue
        rows["image"].append(str(image))
        rows["text"].append(caption)
        rows["file_name"].append(name)
    dataset = Dataset.from_dict(rows).cast_column("image", Image(decode=False))
    return dataset, skipped


# -- the Hub ------------------------------------------------------------------------------------


def _load_hub(source: str, split: str, label: str) -> Any:
    from datasets import load_dataset

    local = Path(source).expanduser().is_dir()
    if not local and not is_hub_id(source):
        known = ", ".join(bundled_names())
        raise UserError(
            f"data '{source}' is not a local folder, a bundled set ({known}) or a manifest (archdiff data list), "
            "nor a Hub dataset id (owner/name)"
        )
    try:
        return load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing, private or no such split: the same fix for the user
        reason = first_line(exc)
        where = "could not be read" if local else "could not be loaded from the Hub"
        raise UserError(f"data '{label}' (split '{split}') {where}: {reason}") from None
