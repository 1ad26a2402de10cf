"""Resolve each data source (bundled set, manifest, local folder, Hub id) and load it through HF `datasets`.

A source loads into a `datasets.Dataset` whose `image` column is left undecoded ({bytes, path}): images
are opened later, one by one, by the catalog, so a broken file is reported by name instead of failing
the whole load. Everything a folder holds that cannot become a training row is reported, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
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


def load_source(config: SourceConfig, default_caption: CaptionConfig, controls: bool = False) -> LoadedSource:
    """Load one source; manifests fill in the Hub id, columns, kind and caption they document.

    `controls` (a ControlNet run): the control column's files are checked and become an undecoded image column.
    """
    from archdiff.data.manifests import find_manifest

    caption, kind, split, image_column = config.caption or default_caption, config.kind, config.split, config.image_column
    path = Path(config.path).expanduser()
    skipped: list[Skipped] = []
    if path.is_dir():
        dataset, skipped = _load_local(path, split, config.control_column, controls, config.mask_column)
        label = str(path)
    elif config.path in bundled_names():
        folder = bundled_datasets_dir() / config.path
        dataset, skipped = _load_local(folder, split, config.control_column, controls, config.mask_column)
        label = config.path
    elif manifest := find_manifest(config.path):
        caption = config.caption or manifest.caption
        kind = config.kind or manifest.kind
        split, image_column = manifest.split, manifest.image_column
        if manifest.control_column and "control_column" not in config.model_fields_set:
            config = config.model_copy(update={"control_column": manifest.control_column})
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
    if controls and config.control_column in dataset.column_names:
        dataset = _control_column(dataset, config.control_column, label)
    if config.mask_column:
        from archdiff.data.masks import mask_column_images

        dataset = mask_column_images(dataset, config.mask_column, label)
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


def _control_column(dataset: Any, column: str, label: str) -> Any:
    """The control column as undecoded images, like `image`: file paths (folders) or embedded images (the Hub)."""
    from datasets import Image

    try:
        return dataset.cast_column(column, Image(decode=False))
    except Exception as error:  # noqa: BLE001 - Arrow's cast errors: name the column, not pyarrow's internals
        raise UserError(f"data '{label}': column '{column}' holds no image files or images ({first_line(error)})") from None


# -- local folders ------------------------------------------------------------------------------

SPLIT_FOLDERS = ("train", "test", "validation", "valid", "val", "eval")  # HF imagefolder's split folder names
CSV_DELIMITERS = ",;\t|"  # Excel writes ';' where the decimal mark is a comma


def _load_local(
    folder: Path, split: str, control_column: str = "control", controls: bool = False, mask_column: str | None = None
) -> tuple[Any, list[Skipped]]:
    """A `save_to_disk` folder, a Hub-style repo folder (parquet/arrow files), or an image folder."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _load_saved(folder, split), []
    if any(folder.glob("*.parquet")) or any(folder.glob("data/*.parquet")) or any(folder.glob("data/*.arrow")):
        return _load_hub(str(folder), split, str(folder)), []
    images, skipped = image_files(folder, split)
    metadata = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if not metadata and any((folder / split / name).is_file() for name in METADATA_FILES):
        dataset, inner = _load_local(
            folder / split, split, control_column, controls, mask_column
        )  # the HF layout: train/metadata.jsonl, test/metadata.jsonl
        outside = [p.relative_to(folder).as_posix() for p in images if p.relative_to(folder).parts[0] != split]
        skipped += [Skipped(name, f"outside the '{split}' folder, whose metadata file lists the images") for name in outside]
        return dataset, skipped + [Skipped(f"{split}/{item.name}", item.reason) for item in inner]
    if not images and not skipped:
        raise UserError(f"data folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not images:
        reasons = "; ".join(f"{item.name}: {item.reason}" for item in skipped[:3])
        raise UserError(f"data folder '{folder}' holds no usable images ({len(skipped)} skipped: {reasons})")
    if metadata:
        return _load_imagefolder(folder, metadata[0], images, skipped, control_column, controls, mask_column)
    dataset, unreadable = _load_sidecar(folder, images)
    return dataset, skipped + unreadable


def image_files(folder: Path, split: str) -> tuple[list[Path], list[Skipped]]:
    """The image files to train on, and every image-named entry that cannot be, with the reason."""
    from archdiff.data.images import HEIF_HINT, HEIF_SUFFIXES, heif_available

    images, skipped = [], []
    split_layout = (folder / split).is_dir()
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | HEIF_SUFFIXES:
            continue
        name = path.relative_to(folder).as_posix()
        top = path.relative_to(folder).parts[0]
        if path.is_symlink() and not path.exists():
            skipped.append(Skipped(name, f"dangling symlink (it points to {os.readlink(path)}, which does not exist)"))
        elif not path.is_file():
            continue
        elif split_layout and top != split and top.lower() in SPLIT_FOLDERS and path.parent != folder:
            skipped.append(Skipped(name, f"in the '{top}' split folder; this source reads split '{split}' (its `split:`)"))
        elif suffix in HEIF_SUFFIXES and not heif_available():
            skipped.append(Skipped(name, HEIF_HINT))
        else:
            images.append(path)
    return images, skipped


def _load_saved(folder: Path, split: str) -> Any:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(folder))
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise UserError(f"data '{folder}' has no split '{split}' (splits: {', '.join(dataset)})")
        dataset = dataset[split]
    return dataset


def _metadata_text(metadata: Path) -> str:
    """The file as text, with a line-precise error for bad UTF-8; an Excel byte-order mark is dropped."""
    raw = metadata.read_bytes()
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{metadata}: line {number} is not valid UTF-8 ({error.reason} at byte {error.start})") from None
    return raw.decode("utf-8-sig")


def _csv_rows(metadata: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """CSV rows by line number; the delimiter is the one (of , ; tab |) that makes `file_name` a header field."""
    header = text.split("\n", 1)[0].rstrip("\r")
    delimiter = next((d for d in CSV_DELIMITERS if "file_name" in next(csv.reader([header], delimiter=d), [])), None)
    if delimiter is None:
        raise UserError(f"{metadata}: line 1 (the header) has no file_name column (it reads {header[:80]!r})")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    for row in reader:
        if None in row:
            raise UserError(
                f"{metadata}: line {reader.line_num} has {len(reader.fieldnames or []) + len(row[None])} fields, "
                f"the header {len(reader.fieldnames or [])} (delimiter {delimiter!r}); quote fields that contain it"
            )
        rows.append((reader.line_num, row))
    return rows


def metadata_rows(metadata: Path) -> list[tuple[int, dict[str, Any]]]:
    """The metadata file's rows with their line numbers; a line-precise error for bad UTF-8, JSON or CSV."""
    text = _metadata_text(metadata)
    if metadata.suffix == ".csv":
        return _csv_rows(metadata, text)
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a caption
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{metadata}: line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict) or "file_name" not in row:
            raise UserError(f"{metadata}: line {number} has no file_name")
        rows.append((number, row))
    return rows


def _value_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "mapping"}.get(type(value), "text")


def _as_text(value: Any) -> str:
    """A metadata value as text: lists joined with ', ' (as captions join them), mappings as JSON."""
    if isinstance(value, list):
        return ", ".join(_as_text(item) for item in value if item is not None)
    if isinstance(value, (dict, bool)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _uniform_column(values: list[Any]) -> list[Any]:
    """A column Arrow can hold: values of one kind stay as they are; a mix (numbers and text, a list
    among strings, lists of mixed items) becomes text, as the caption would read it anyway."""
    kinds = {kind for value in values if (kind := _value_kind(value))}
    if len(kinds) > 1 or kinds == {"mapping"}:
        return [None if value is None else _as_text(value) for value in values]
    if kinds == {"list"}:
        items = {kind for value in values for item in value if (kind := _value_kind(item))}
        if len(items) > 1 or items & {"list", "mapping"}:
            return [None if value is None else [_as_text(item) for item in value if item is not None] for value in values]
    return values


def _rows_dataset(metadata: Path, rows: list[tuple[int, dict[str, Any], Path]]) -> Any:
    """The listed images and their metadata as a `datasets.Dataset` (columns as HF imagefolder names them)."""
    from datasets import Dataset, Image

    columns = list(dict.fromkeys(key for _, row, _ in rows for key in row if key != "file_name"))
    if "image" in columns:
        number = next(n for n, row, _ in rows if "image" in row)
        raise UserError(f"{metadata}: line {number}: column 'image' is reserved for the file; rename it")
    table: dict[str, list[Any]] = {"image": [str(path) for _, _, path in rows]}
    for column in columns:
        table[column] = _uniform_column([row.get(column) for _, row, _ in rows])
    try:
        dataset = Dataset.from_dict(table)
    except Exception as error:  # noqa: BLE001 - Arrow's type errors: say which file and column, not where in pyarrow
        raise UserError(f"{metadata}: {_bad_column(table, rows)}cannot be read: {first_line(error)}") from None
    return dataset.cast_column("image", Image(decode=False))


def _bad_column(table: dict[str, list[Any]], rows: list[tuple[int, dict[str, Any], Path]]) -> str:
    """'line N, column 'x': ' for the first value Arrow refuses on its own, or '' when only the whole table fails."""
    import pyarrow

    for column, values in table.items():
        for (number, _, _), value in zip(rows, values, strict=True):
            try:
                pyarrow.array([value])
            except Exception:  # noqa: BLE001 - any Arrow refusal
                return f"line {number}, column '{column}' ({value!r:.60}) "
    return ""


def _load_imagefolder(
    folder: Path,
    metadata: Path,
    images: list[Path],
    skipped: list[Skipped],
    control_column: str,
    controls: bool,
    mask_column: str | None = None,
) -> tuple[Any, list[Skipped]]:
    """Images listed by metadata.jsonl or metadata.csv (HF imagefolder's format), after checking every row.

    Files the control (or mask) column names are a row's control images (masks), not unlisted training images."""
    from archdiff.data.pairs import named_control_files

    root = folder.resolve()
    usable = {path.resolve() for path in images}
    already = {item.name for item in skipped}
    listed: set[Path] = set()
    kept: list[tuple[int, dict[str, Any], Path]] = []
    for number, row in metadata_rows(metadata):
        name = str(row["file_name"])
        path, known = folder / name, Path(name).as_posix() in already
        if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
            raise UserError(f"{metadata}: line {number}: file_name '{name}' points outside the data folder; refused")
        if path.is_symlink() and not path.exists():
            if not known:
                skipped.append(Skipped(name, f"dangling symlink (it points to {os.readlink(path)}, which does not exist)"))
            continue
        if not path.is_file():
            raise UserError(f"{metadata}: line {number}: file_name '{name}' does not exist")
        if path.resolve() not in usable:
            if not known:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                skipped.append(Skipped(name, f"listed in {metadata.name} but not an image file ({suffixes})"))
            continue
        listed.add(path.resolve())
        kept.append((number, row, path))
    listed |= named_control_files(folder, metadata, kept, control_column, resolve=controls)
    if mask_column:
        listed |= named_control_files(folder, metadata, kept, mask_column, resolve=True)
    unlisted = [path for path in images if path.resolve() not in listed]
    skipped += [Skipped(path.relative_to(folder).as_posix(), f"not listed in {metadata.name}") for path in unlisted]
    return _rows_dataset(metadata, kept), skipped


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
