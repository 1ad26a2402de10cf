"""The numbers `data inspect` prints: what training would see, read from the catalog without loading a model."""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass

from archdiff.config.schema import DataConfig
from archdiff.data.buckets import Bucket
from archdiff.data.catalog import Catalog, ImageRecord, build_catalog
from archdiff.data.samples import Sample, bucket_report, expand_samples

SIZE_EDGES = (0, 256, 512, 768, 1024, 2048, 4096)  # lower edges of the long-side bins, px
SIZE_LABELS = ("< 256 px", "256-511 px", "512-767 px", "768-1023 px", "1024-2047 px", "2048-4095 px", ">= 4096 px")
ASPECT_LABELS = ("< 1:3", "1:3 - 1:2", "1:2 - 3:4", "~1:1", "4:3 - 2:1", "2:1 - 3:1", "> 3:1")
_ELONGATION_EDGES = (4 / 3, 2.0, 3.0)  # long side / short side where the aspect bins change
BAR_WIDTH = 40

CLIP_TOKENS = 75  # CLIP's 77 positions minus its start and end tokens
TOKENS_PER_WORD = 1.3  # English words average about 1.3 CLIP tokens


def size_bin(width: int, height: int) -> int:
    """Index into SIZE_LABELS by the long side."""
    return bisect_right(SIZE_EDGES, max(width, height)) - 1


def aspect_bin(width: int, height: int) -> int:
    """Index into ASPECT_LABELS; symmetric, so a 3:4 portrait is as far from square as a 4:3 landscape.

    Each bin includes its upper edge: exactly 4:3 is ~1:1, exactly 2:1 is 4:3 - 2:1.
    """
    step = bisect_left(_ELONGATION_EDGES, max(width, height) / min(width, height))
    return 3 + step if width >= height else 3 - step


def histogram(bins: list[int], labels: tuple[str, ...]) -> list[tuple[str, int]]:
    counts = Counter(bins)
    return [(label, counts[index]) for index, label in enumerate(labels)]


def draw_histogram(rows: list[tuple[str, int]]) -> list[str]:
    """'  label  count  ####' lines, bars scaled to the largest count; any non-zero count gets at least one #."""
    top = max(count for _, count in rows) or 1
    label_width = max(len(label) for label, _ in rows)
    count_width = len(str(top))
    return [
        f"  {label.ljust(label_width)}  {count:>{count_width}}  {'#' * math.ceil(count * BAR_WIDTH / top)}".rstrip()
        for label, count in rows
    ]


def find_duplicates(records: list[ImageRecord]) -> list[list[str]]:
    """Names of the images with identical bytes, one group per content hash: a duplicate trains twice as often."""
    groups: dict[str, list[str]] = defaultdict(list)
    for record in records:
        groups[record.content_hash].append(record.name)
    return [names for names in groups.values() if len(names) > 1]


@dataclass(frozen=True)
class CaptionStats:
    min_words: int
    median_words: float
    max_words: int
    over_clip: int  # estimated: CLIP silently cuts these off at 77 tokens
    empty: int


def caption_stats(captions: list[str]) -> CaptionStats:
    words = [len(caption.split()) for caption in captions]
    return CaptionStats(
        min(words),
        statistics.median(words),
        max(words),
        sum(count * TOKENS_PER_WORD > CLIP_TOKENS for count in words),
        words.count(0),
    )


@dataclass
class Report:
    config: DataConfig
    catalog: Catalog
    captions: list[str]  # per usable image, in catalog order: its caption without random variation
    buckets: list[Bucket]  # per usable image: the bucket it trains in
    samples: list[Sample]  # one training epoch: source repeats and drawing tiles included

    @property
    def label(self) -> str:
        return ", ".join(source.label for source in self.catalog.sources)


def inspect_data(cfg: DataConfig) -> Report:
    """Scan the data as a run would, without loading any model."""
    from archdiff.data.captions import build_caption

    catalog = build_catalog(cfg)
    records = catalog.records
    captions = [build_caption(catalog.sources[record.source].caption, record.fields) for record in records]
    buckets = [sample.bucket for sample in expand_samples(records, cfg, train=False)]
    return Report(cfg, catalog, captions, buckets, expand_samples(records, cfg, train=True))


def format_report(report: Report) -> str:
    records, skipped = report.catalog.records, report.catalog.skipped
    lines = [
        f"data: {report.label}",
        f"images: {len(records) + len(skipped)} found, {len(records)} usable, {len(skipped)} skipped",
        *(f"  skipped {item.name}: {item.reason}" for item in skipped),
        "kinds: " + ", ".join(f"{count} {kind}" for kind, count in sorted(Counter(r.kind for r in records).items())),
        "long side:",
        *draw_histogram(histogram([size_bin(r.width, r.height) for r in records], SIZE_LABELS)),
        "aspect ratio (width:height):",
        *draw_histogram(histogram([aspect_bin(r.width, r.height) for r in records], ASPECT_LABELS)),
        f"buckets at {report.config.resolution} px, one epoch of {len(report.samples)} samples: {bucket_report(report.samples)}",
    ]
    upscaled = sum(r.width < w or r.height < h for r, (w, h) in zip(records, report.buckets, strict=True))
    if upscaled:
        lines.append(f"  {upscaled} of {len(records)} images are smaller than their bucket and get upscaled (softer detail)")
    stats = caption_stats(report.captions)
    lines.append(
        f"captions: {stats.min_words}-{stats.max_words} words (median {stats.median_words:g}); "
        f"about {stats.over_clip} longer than CLIP's 77 tokens (cut off); {stats.empty} empty"
    )
    duplicates = find_duplicates(records)
    lines.append(f"duplicates: {len(duplicates)} groups of identical files" if duplicates else "duplicates: none")
    lines += [f"  {' = '.join(names)}" for names in duplicates]
    return "\n".join(lines)
