"""`archdiff data inspect` and `archdiff data check-vae`: look at the data before a long run is spent on it.

inspect reports what training would see (skipped files, sizes, aspect ratios, buckets, captions,
duplicates) and draws a contact sheet. check-vae round-trips the training crops through the base's VAE:
what the VAE cannot reproduce (thin plan lines above all) a LoRA can never learn, however long it trains.
"""

from __future__ import annotations

import math
import re
import statistics
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from archdiff.config.schema import DataConfig
from archdiff.data.buckets import Bucket
from archdiff.data.catalog import Catalog, ImageRecord, build_catalog
from archdiff.data.samples import Sample, bucket_report, expand_samples, prepared_image

SIZE_EDGES = (0, 256, 512, 768, 1024, 2048, 4096)  # lower edges of the long-side bins, px
SIZE_LABELS = ("< 256 px", "256-511 px", "512-767 px", "768-1023 px", "1024-2047 px", "2048-4095 px", ">= 4096 px")
ASPECT_LABELS = ("< 1:3", "1:3 - 1:2", "1:2 - 3:4", "~1:1", "4:3 - 2:1", "2:1 - 3:1", "> 3:1")
_ELONGATION_EDGES = (4 / 3, 2.0, 3.0)  # long side / short side where the aspect bins change
BAR_WIDTH = 40

CLIP_TOKENS = 75  # CLIP's 77 positions minus its start and end tokens
TOKENS_PER_WORD = 1.3  # English words average about 1.3 CLIP tokens

# Contact sheet layout, px.
CELL = 256
GAP = 16
COLUMNS = 6
FONT_SIZE = 14
LINE_HEIGHT = 18
TITLE_SIZE = 22
TITLE_HEIGHT = 52
CAPTION_LINES = 4
LABEL_HEIGHT = 6 + (2 + CAPTION_LINES) * LINE_HEIGHT  # name, size/kind/bucket, caption lines
ROW_HEIGHT = CELL + LABEL_HEIGHT + GAP
LETTERBOX = (236, 236, 236)  # grey behind thumbnails, so white paper shows where the image ends
FRAME = (200, 200, 200)

MAX_PSNR = 100.0  # identical images have infinite PSNR; capped so means and sorting stay finite
MIN_PSNR = 20.0
DARK = 128  # grey level below which an original pixel counts as line
STILL_DARK = 160  # grey level below which the round-tripped pixel still counts as line
MIN_LINE_SCORE = 0.8
WORST_SHOWN = 4  # unflagged images that get a before/after PNG anyway, worst first
MIN_PANEL = 256  # before/after panels are enlarged (pixel-exact) to at least this width
COMPARISON_SUFFIX = "-vae.png"
TABLE_ROWS = 30


def safe_name(data: str) -> str:
    """A folder name for DATA's outputs: a local folder's own name, or the set name or Hub id with `/` as `-`."""
    path = Path(data).expanduser()
    text = path.resolve().name if path.is_dir() else data
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total), the first included: the same picks on every run."""
    if total <= count:
        return list(range(total))
    return [i * total // count for i in range(count)]


# -- inspect -------------------------------------------------------------------------------------


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


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_text(text: str, font, width: int) -> str:
    """The text, cut with '...' if it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap_text(text: str, font, width: int, max_lines: int) -> list[str]:
    """Word-wrapped to `width` pixels; the last kept line ends in '...' when the text goes on."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    return [fit_text(line, font, width) for line in lines]


def _thumbnail(image: Image.Image, kind: str) -> Image.Image:
    """The image scaled (up or down) to fit a CELL square, centred on a letterbox."""
    from archdiff.data.images import resize

    scale = CELL / max(image.size)
    fitted = resize(image, (max(1, round(image.width * scale)), max(1, round(image.height * scale))), kind)
    box = Image.new("RGB", (CELL, CELL), LETTERBOX)
    box.paste(fitted, ((CELL - fitted.width) // 2, (CELL - fitted.height) // 2))
    return box


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
    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
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
        sheet.paste(_thumbnail(image, record.kind), (left, top))
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


# -- check-vae -----------------------------------------------------------------------------------


def psnr(before: Image.Image, after: Image.Image) -> float:
    """Peak signal-to-noise ratio of two same-size 8-bit images in dB, capped at MAX_PSNR."""
    error = np.mean((np.asarray(before, dtype=np.float64) - np.asarray(after, dtype=np.float64)) ** 2)
    return MAX_PSNR if error == 0 else min(MAX_PSNR, 10 * math.log10(255**2 / error))


def line_score(before: Image.Image, after: Image.Image) -> float:
    """How well a round trip keeps a drawing's lines: the F1 of the dark-pixel masks before and after.

    Lost lines and stray ink both cost (an all-dark smear keeps every line but is not a drawing);
    1.0 when neither image has dark pixels.
    """
    lines = np.asarray(before.convert("L")) < DARK
    dark = np.asarray(after.convert("L")) < STILL_DARK
    if not lines.any() and not dark.any():
        return 1.0
    return float(2 * (lines & dark).sum() / (lines.sum() + dark.sum()))


@dataclass(frozen=True)
class VaeCheck:
    name: str
    kind: str
    bucket: Bucket
    psnr: float
    line_score: float | None  # drawings only

    @property
    def problems(self) -> list[str]:
        found = [f"PSNR < {MIN_PSNR:g} dB"] if self.psnr < MIN_PSNR else []
        if self.line_score is not None and self.line_score < MIN_LINE_SCORE:
            found.append(f"line score < {MIN_LINE_SCORE:g}")
        return found

    @property
    def order(self) -> tuple[bool, float, float]:
        """Sort key, worst first: flagged images, then by PSNR and line score."""
        return not self.problems, self.psnr, 1.0 if self.line_score is None else self.line_score


@dataclass
class VaeReport:
    label: str
    checks: list[VaeCheck]  # worst first
    folder: Path
    written: list[Path]  # before/after PNGs


def round_trip(vae, image: Image.Image) -> Image.Image:
    """Encode to the latent distribution's mode and decode again, as 8-bit RGB."""
    import torch

    from archdiff.data.images import to_tensor

    with torch.no_grad():
        pixels = to_tensor(image).unsqueeze(0).to(vae.device, vae.dtype)
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample[0]
    array = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def comparison(before: Image.Image, after: Image.Image, check: VaeCheck) -> Image.Image:
    """Before and after side by side under a label strip; small buckets are enlarged pixel-exactly to stay visible."""
    scale = math.ceil(MIN_PANEL / before.width) if before.width < MIN_PANEL else 1
    panel = (before.width * scale, before.height * scale)
    font = _font(FONT_SIZE)
    width = 2 * panel[0] + 3 * GAP
    strip = GAP + 3 * LINE_HEIGHT + 6
    canvas = Image.new("RGB", (width, strip + panel[1] + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    metrics = f"PSNR {check.psnr:.1f} dB" + ("" if check.line_score is None else f", line score {check.line_score:.2f}")
    verdict = f"flagged: {', '.join(check.problems)}" if check.problems else "not flagged"
    texts = [
        (GAP, 0, f"{check.name}  {check.kind}  bucket {check.bucket[0]}x{check.bucket[1]}", "black", width - 2 * GAP),
        (GAP, 1, f"{metrics}; {verdict}", (170, 30, 30) if check.problems else (30, 110, 30), width - 2 * GAP),
        (GAP, 2, "before (training crop)", (90, 90, 90), panel[0]),
        (2 * GAP + panel[0], 2, "after (VAE encode + decode)", (90, 90, 90), panel[0]),
    ]
    for x, line, text, colour, room in texts:
        draw.text((x, GAP + line * LINE_HEIGHT), fit_text(text, font, room), fill=colour, font=font)
    for x, image in ((GAP, before), (2 * GAP + panel[0], after)):
        canvas.paste(image.resize(panel, Image.Resampling.NEAREST), (x, strip))
    return canvas


def _save_comparison(before: Image.Image, after: Image.Image, check: VaeCheck, folder: Path) -> Path:
    path = folder / f"{safe_name(str(Path(check.name).with_suffix('')))}{COMPARISON_SUFFIX}"
    comparison(before, after, check).save(path)
    return path


def check_vae(cfg: DataConfig, base_name: str, folder: Path, limit: int | None = None) -> VaeReport:
    """Round-trip every usable image (or `limit` spread evenly) through the base's VAE at the training crop.

    Writes a before/after PNG into `folder` for each flagged image and the WORST_SHOWN worst others,
    replacing the comparisons of an earlier check there.
    """
    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    from archdiff.model.base import resolve_base

    base = resolve_base(base_name)
    catalog = build_catalog(cfg)
    records = [catalog.records[i] for i in spread(limit or len(catalog.records), len(catalog.records))]
    vae = AutoencoderKL.from_pretrained(base.source, subfolder="vae").to("cuda" if torch.cuda.is_available() else "cpu").eval()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"*{COMPARISON_SUFFIX}"):
        old.unlink()
    checks: list[VaeCheck] = []
    written: list[Path] = []
    worst: list[tuple[VaeCheck, Image.Image, Image.Image]] = []
    for sample in tqdm(expand_samples(records, cfg, train=False), desc="vae round trip", unit="img"):
        before = prepared_image(catalog, sample, cfg.max_pixels)
        after = round_trip(vae, before)
        lines = line_score(before, after) if sample.record.kind == "drawing" else None
        check = VaeCheck(sample.record.name, sample.record.kind, sample.bucket, psnr(before, after), lines)
        checks.append(check)
        if check.problems:
            written.append(_save_comparison(before, after, check, folder))
        else:
            worst = sorted([*worst, (check, before, after)], key=lambda item: item[0].order)[:WORST_SHOWN]
    written += [_save_comparison(before, after, check, folder) for check, before, after in worst]
    label = ", ".join(source.label for source in catalog.sources)
    return VaeReport(label, sorted(checks, key=lambda check: check.order), folder, written)


def _mean_psnr(checks: list[VaeCheck], kind: str) -> str:
    values = [check.psnr for check in checks if check.kind == kind]
    return f"{kind}s {statistics.fmean(values):.1f} dB ({len(values)})" if values else f"{kind}s -"


def format_vae_report(report: VaeReport) -> str:
    checks = report.checks
    name_width = max(len("IMAGE"), *(len(check.name) for check in checks[:TABLE_ROWS]))
    lines = [f"{'IMAGE':<{name_width}}  KIND     BUCKET     PSNR dB  LINES  PROBLEMS"]
    for check in checks[:TABLE_ROWS]:
        bucket = f"{check.bucket[0]}x{check.bucket[1]}"
        kept = "-" if check.line_score is None else f"{check.line_score:.2f}"
        row = f"{check.name:<{name_width}}  {check.kind:<7}  {bucket:<9}  {check.psnr:7.1f}  {kept:>5}"
        lines.append(f"{row}  {', '.join(check.problems)}".rstrip())
    if len(checks) > TABLE_ROWS:
        lines.append(f"... {len(checks) - TABLE_ROWS} more, each better than those above")
    flagged = sum(bool(check.problems) for check in checks)
    lines += [
        f"data: {report.label}",
        f"mean PSNR: {_mean_psnr(checks, 'photo')}, {_mean_psnr(checks, 'drawing')}",
        f"flagged: {flagged} of {len(checks)} (PSNR < {MIN_PSNR:g} dB, or drawings with a line score < {MIN_LINE_SCORE:g})",
        f"before/after PNGs: {len(report.written)} in {report.folder}",
    ]
    return "\n".join(lines)
