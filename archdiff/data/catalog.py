"""Open every image of every source once, before training: sizes, kinds, content hashes, and what is skipped why.

Decoding each file up front costs one pass over the data, and buys the promise that a run never dies
on image 9,000 and never drops an image without saying so. What the pass learns is cached, so later
runs on the same files decode none of them again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archdiff.config.schema import DataConfig
from archdiff.data.covers import CoverKeeper, Covers
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
    decode: str = "reduced"  # data.decode: how prepared images are decoded (and what keys their cache entries)
    covers: Covers = field(default_factory=lambda: Covers(0), repr=False)

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
    Results do not depend on data.decode: a JPEG decoded at 1/8 scale proves it readable as well as a full decode.
    `scan` may run on several threads at once (dict updates are atomic; equal files just decode twice).
    """

    def __init__(self, path: Path, full: bool = False):
        self.path = path
        self.full = full  # data.decode full: scans decode at full size, as they did before reduced decoding
        self.results: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        self.seen: set[str] = set()  # digests this run scanned: kept when the cache is rewritten
        self.changed = False
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            self.results, self.hashes = dict(stored["results"]), dict(stored["hashes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache yet, or a damaged one: scan afresh

    @classmethod
    def default(cls, full: bool = False) -> ScanCache:
        from PIL import __version__ as pillow

        return cls(cache_dir() / "scan" / f"v{SCAN_CACHE_VERSION}-pillow-{pillow}.json", full)

    def scan(self, value: dict[str, Any], max_pixels: int, keeper: CoverKeeper | None = None) -> tuple[str, int, int]:
        """(content hash, width, height) of an image value; raises what `open_image` raises for a bad one.

        A file not scanned before is decoded at 1/8 scale (JPEG), or with `keeper` at its bucket's cover scale and kept.
        """
        from archdiff.data import images

        stamp = _file_stamp(value)
        digest = self.hashes.get(stamp) if stamp else None
        data = None
        if digest is None:
            data = read_image_value(value)
            digest = images.content_hash(data)
            if stamp:
                self.hashes[stamp] = digest
                self.changed = True
        self.seen.add(digest)
        known = self.results.get(digest)
        if known is None:
            data = data if data is not None else read_image_value(value)
            try:
                size = images.jpeg_size(data, max_pixels)  # None: a format that decodes at full size anyway
                cover = keeper.cover(*size) if keeper and size else None
                image = images.open_image(data, max_pixels, reduce_to=None if self.full or not size else cover or (1, 1))
                size = size or image.size
            except (images.TooManyPixels, images.HeifUnsupported):
                raise  # not decoded, so nothing is known yet
            except images.UnreadableImage as error:
                self.results[digest] = {"error": str(error)}
                self.changed = True
                raise
            if keeper:
                keeper.keep(digest, image, cover or keeper.cover(*size))
            known = self.results[digest] = {"size": list(size)}
            self.changed = True
        if "error" in known:
            raise images.UnreadableImage(known["error"])
        width, height = known["size"]
        images.check_pixels(width, height, max_pixels)
        return digest, width, height

    def save(self) -> None:
        """Write what changed, forgetting files that are gone or rewritten, and results no file or this scan refers to."""
        if self.changed:
            self.hashes = {stamp: digest for stamp, digest in self.hashes.items() if _stamp_current(stamp)}
            alive = self.seen | set(self.hashes.values())
            self.results = {digest: result for digest, result in self.results.items() if digest in alive}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"results": self.results, "hashes": self.hashes}))
            self.changed = False


def _stamp_current(stamp: str) -> bool:
    try:
        return file_stamp(Path(stamp.rsplit("|", 2)[0])) == stamp
    except OSError:
        return False


def _file_stamp(value: dict[str, Any]) -> str | None:
    """Path, size and modification time of an image stored as a file; None for embedded bytes."""
    if value.get("bytes") is not None or not value.get("path"):
        return None
    return file_stamp(Path(value["path"]))


@dataclass(frozen=True)
class _Probed:
    """What a worker learnt about one row: its scanned image or why not (None when it has no caption)."""

    row_index: int
    row: dict[str, Any]
    scanned: tuple[str, int, int] | None = None
    error: Exception | None = None


def scan_source(
    source: LoadedSource,
    index: int,
    max_pixels: int,
    progress,
    scans: ScanCache,
    paired: bool = False,
    workers: int = 1,
    keeper: Callable[[str], CoverKeeper] | None = None,
) -> tuple[list[ImageRecord], list[Skipped]]:
    """Every row's image (and, when `paired`, its control image): records to train on and rows skipped with the reason.

    Rows are decoded `workers` at a time and handled in order; `keeper(kind)` keeps each image decoded for the cache.
    """
    from archdiff.data.captions import MissingField, base_caption
    from archdiff.data.images import UnreadableImage
    from archdiff.data.workers import ordered_map

    def probe(item: tuple[int, dict[str, Any]]) -> _Probed:
        row_index, row = item
        fields = {key: value for key, value in row.items() if key != "image"}
        try:
            base_caption(source.caption, fields, None)
        except MissingField:
            return _Probed(row_index, row)
        try:
            kind = _row_kind(source, row, "")
        except UserError:
            kind = None  # refused in order below, once the image proves readable
        try:
            scanned = scans.scan(row["image"] or {}, max_pixels, keeper(kind) if keeper and kind else None)
        except (UnreadableImage, OSError) as error:
            return _Probed(row_index, row, error=error)
        control = row.get(source.config.control_column) if paired else None
        if control and (control.get("path") or control.get("bytes")):
            try:
                scans.scan(control, max_pixels)  # decoded here; `scan_control` below finds it scanned
            except (UnreadableImage, OSError):
                pass  # reported by `scan_control`
        return _Probed(row_index, row, scanned)

    records, skipped = [], list(source.skipped)
    for probed in ordered_map(probe, enumerate(source.dataset), workers):
        row_index, row = probed.row_index, probed.row
        name = _row_name(source, row, row_index)
        progress.update(1)
        fields = {key: value for key, value in row.items() if key != "image"}
        try:
            base_caption(source.caption, fields, None)
        except MissingField as missing:
            skipped.append(Skipped(name, f"no caption ({missing.args[0]} is empty)"))
            continue
        if probed.error is not None:
            skipped.append(Skipped(name, str(probed.error)))
            continue
        digest, width, height = probed.scanned
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


def build_catalog(cfg: DataConfig, controls: bool = False, keep_covers: bool = False) -> Catalog:
    """Load every source and scan every image; refuses a dataset with nothing left to train on.

    `controls` (a ControlNet run): each source pairs its images with control images through its control
    column, or has them extracted from the images by `data.control.type`; a source with neither is refused.
    `keep_covers` (the run builds a latent cache): the scan decodes each new image at its bucket's scale and
    keeps it for the cache build, which then decodes only what the byte budget did not hold.
    """
    from tqdm.auto import tqdm

    from archdiff.data.buckets import assign_bucket, cover_size
    from archdiff.data.samples import bucket_list
    from archdiff.data.workers import default_workers

    sources = [load_source(source, cfg.caption, controls) for source in cfg.sources]
    paired = [controls and source.config.control_column in source.dataset.column_names for source in sources]
    for source, has_controls in zip(sources, paired, strict=True):
        if controls and not has_controls and cfg.control.type == "none":
            raise UserError(
                f"data '{source.label}' has no control column '{source.config.control_column}' to pair its images with: "
                "name the column with the source's control_column, or set data.control.type (lines, canny, drawing) "
                "to make controls from the images themselves"
            )
    covers = Covers() if keep_covers else Covers(0)
    buckets = bucket_list(cfg)

    def cover(width: int, height: int) -> tuple[int, int]:
        return cover_size(width, height, assign_bucket(width, height, buckets))

    keeper = (lambda kind: CoverKeeper(kind, cover, covers, cfg.decode)) if keep_covers else None
    records: list[ImageRecord] = []
    skipped: list[Skipped] = []
    total = sum(len(source.dataset) for source in sources)
    scans = ScanCache.default(full=cfg.decode == "full")
    workers = default_workers(cfg.decode_workers)
    with tqdm(total=total, desc="scan images", unit="img", leave=False, disable=total < 100) as progress:
        for index, source in enumerate(sources):
            found, missed = scan_source(source, index, cfg.max_pixels, progress, scans, paired[index], workers, keeper)
            records += found
            skipped += missed
    scans.save()
    if not records:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5])
        raise UserError(f"data has no usable images ({len(skipped)} skipped: {reasons})")
    return Catalog(sources, records, skipped, cfg.decode, covers)


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
