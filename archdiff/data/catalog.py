"""Open every image of every source once, before training: sizes, kinds, content hashes, and what is skipped why.

Decoding each file up front costs one pass over the data, and buys the promise that a run never dies
on image 9,000 and never drops an image without saying so. What the pass learns is cached, so later
runs on the same files decode none of them again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archdiff.config.schema import DataConfig
from archdiff.data.masks import MaskRef, scan_record_mask
from archdiff.data.pairs import PairedControl, scan_control
from archdiff.data.sources import LoadedSource, Skipped, load_source
from archdiff.errors import UserError
from archdiff.file_digests import file_stamp
from archdiff.paths import cache_dir
from archdiff.run_files import write_text_atomic

SCAN_CACHE_VERSION = 2  # bump when what a scan learns about an image changes

KINDS = ("photo", "drawing")


@dataclass(frozen=True)
class ImageRecord:
    source: int  # index into Catalog.sources
    row: int  # row in that source's dataset
    name: str
    width: int  # after EXIF orientation
    height: int
    kind: str
    content_hash: str
    fields: dict[str, Any] = field(hash=False, compare=False)  # the metadata row, without the image
    control: PairedControl | None = field(default=None, hash=False, compare=False)  # a ControlNet run's paired control
    mask: MaskRef | None = field(default=None, hash=False, compare=False)  # the loss mask; None learns everywhere


@dataclass
class Catalog:
    sources: list[LoadedSource]
    records: list[ImageRecord]
    skipped: list[Skipped]

    def image_bytes(self, record: ImageRecord) -> bytes:
        return read_image_value(self.sources[record.source].dataset[record.row]["image"])

    def control_bytes(self, record: ImageRecord) -> bytes:
        return read_image_value(record.control.value)


def read_image_value(value: dict[str, Any]) -> bytes:
    """The bytes of an undecoded `datasets.Image` value: embedded (Hub parquet) or a file path (folders)."""
    if value.get("bytes") is not None:
        return value["bytes"]
    return Path(value["path"]).read_bytes()


def _row_name(source: LoadedSource, row: dict[str, Any], index: int) -> str:
    if row.get("file_name"):
        return str(row["file_name"])
    path = (row["image"] or {}).get("path")
    return Path(path).name if path else f"{source.label}[{index}]"


def _row_kind(source: LoadedSource, row: dict[str, Any], name: str) -> str:
    kind = source.kind or row.get(source.config.kind_column) or "photo"
    if kind not in KINDS:
        raise UserError(
            f"data '{source.label}': {name} has {source.config.kind_column}={kind!r}; expected one of {', '.join(KINDS)}"
        )
    return kind


class ScanCache:
    """What scanning learnt about each image: its upright size, or why it cannot be trained on.

    Results are keyed by the content hash; files are also indexed by path, size and modification time,
    so an unchanged file is not even read again. Decoding 10,000 camera photos takes minutes; this
    turns every later run's scan into a few stat calls. A file that changes gets a new hash and is decoded.
    """

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        self.changed = False
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            self.results, self.hashes = dict(stored["results"]), dict(stored["hashes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or a damaged one: scan afresh

    @classmethod
    def default(cls) -> ScanCache:
        from PIL import __version__ as pillow

        return cls(cache_dir() / "scan" / f"v{SCAN_CACHE_VERSION}-pillow-{pillow}.json")

    def scan(self, value: dict[str, Any], max_pixels: int) -> tuple[str, int, int]:
        """(content hash, width, height) of an image value; raises what `open_image` raises for a bad one."""
        from archdiff.data.images import HeifUnsupported, TooManyPixels, UnreadableImage, check_pixels, content_hash, open_image

        stamp = _file_stamp(value)
        digest = self.hashes.get(stamp) if stamp else None
        data = None
        if digest is None:
            data = read_image_value(value)
            digest = content_hash(data)
            if stamp:
                self.hashes[stamp] = digest
                self.changed = True
        known = self.results.get(digest)
        if known is None:
            try:
                image = open_image(data if data is not None else read_image_value(value), max_pixels)
            except (TooManyPixels, HeifUnsupported):
                raise  # not decoded, so nothing is known yet
            except UnreadableImage as error:
                self.results[digest] = {"error": str(error)}
                self.changed = True
                raise
            known = self.results[digest] = {"size": [image.width, image.height]}
            self.changed = True
        if "error" in known:
            raise UnreadableImage(known["error"])
        width, height = known["size"]
        check_pixels(width, height, max_pixels)
        return digest, width, height

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"results": self.results, "hashes": self.hashes}))
            self.changed = False


def _file_stamp(value: dict[str, Any]) -> str | None:
    """Path, size and modification time of an image stored as a file; None for embedded bytes."""
    if value.get("bytes") is not None or not value.get("path"):
        return None
    return file_stamp(Path(value["path"]))


def scan_source(
    source: LoadedSource, index: int, max_pixels: int, progress, scans: ScanCache, paired: bool = False
) -> tuple[list[ImageRecord], list[Skipped]]:
    """Every row's image (and, when `paired`, its control image): records to train on and rows skipped with the reason."""
    from archdiff.data.captions import MissingField, base_caption
    from archdiff.data.images import UnreadableImage

    records, skipped = [], list(source.skipped)
    for row_index, row in enumerate(source.dataset):
        name = _row_name(source, row, row_index)
        progress.update(1)
        fields = {key: value for key, value in row.items() if key != "image"}
        try:
            base_caption(source.caption, fields, None)
        except MissingField as missing:
            skipped.append(Skipped(name, f"no caption ({missing.args[0]} is empty)"))
            continue
        try:
            digest, width, height = scans.scan(row["image"] or {}, max_pixels)
        except (UnreadableImage, OSError) as error:
            skipped.append(Skipped(name, str(error)))
            continue
        control = None
        if paired:
            column = source.config.control_column
            control = scan_control(row[column], name, source.label, (width, height), scans, max_pixels)
            if control is None:
                skipped.append(Skipped(name, f"no control image (column '{column}' is empty)"))
                continue
        kind = _row_kind(source, row, name)
        mask = scan_record_mask(source, row, name, (width, height), scans, max_pixels)
        records.append(ImageRecord(index, row_index, name, width, height, kind, digest, fields, control, mask))
    return records, skipped


def build_catalog(cfg: DataConfig, controls: bool = False) -> Catalog:
    """Load every source and scan every image; refuses a dataset with nothing left to train on.

    `controls` (a ControlNet run): each source pairs its images with control images through its control
    column, or has them extracted from the images by `data.control.type`; a source with neither is refused.
    """
    from tqdm.auto import tqdm

    sources = [load_source(source, cfg.caption, controls) for source in cfg.sources]
    paired = [controls and source.config.control_column in source.dataset.column_names for source in sources]
    for source, has_controls in zip(sources, paired, strict=True):
        if controls and not has_controls and cfg.control.type == "none":
            raise UserError(
                f"data '{source.label}' has no control column '{source.config.control_column}' to pair its images with: "
                "name the column with the source's control_column, or set data.control.type (lines, canny, drawing) "
                "to make controls from the images themselves"
            )
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    total = sum(len(source.dataset) for source in sources)
    scans = ScanCache.default()
    with tqdm(total=total, desc="scan images", unit="img", leave=False, disable=total < 100) as progress:
        for index, source in enumerate(sources):
            found, missed = scan_source(source, index, cfg.max_pixels, progress, scans, paired[index])
            records += found
            skipped += missed
    scans.save()
    if not records:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        raise UserError(f"data has no usable images ({len(skipped)} skipped: {reasons})")
    return Catalog(sources, records, skipped)


def split_holdout(
    records: list[ImageRecord], fraction: float, group_column: str | None, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, holdout) picked by the seed; with a group column, each group lands wholly on one side."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    wanted = max(1, round(len(records) * fraction))

    def group_of(record: ImageRecord) -> str:
        key = record.fields.get(group_column) if group_column else f"{record.source}/{record.row}"
        if key is None:
            raise UserError(f"data.holdout_group: {record.name} has no '{group_column}' value")
        return str(key)

    sizes: dict[str, int] = {}
    for record in records:
        sizes[group_of(record)] = sizes.get(group_of(record), 0) + 1
    if len(sizes) < 2:
        raise UserError(f"data.holdout_group: all images share one '{group_column}', so nothing can be held out")
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    held: set[str] = set()
    count = 0
    for key in order[:-1]:  # the last group always trains
        if count >= wanted:
            break
        held.add(key)
        count += sizes[key]
    return [r for r in records if group_of(r) not in held], [r for r in records if group_of(r) in held]
