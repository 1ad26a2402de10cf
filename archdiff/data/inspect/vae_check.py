"""`data check-vae`: round-trip the training crops through the base's VAE and flag what it loses.

Every image is judged by PSNR; drawings also by a line score (how their dark pixels match before and
after), because a few thin lines lost on white paper barely move the PSNR.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from archdiff.config.schema import DataConfig
from archdiff.data.buckets import Bucket
from archdiff.data.catalog import build_catalog
from archdiff.data.inspect.labels import GAP, LINE_HEIGHT, fit_text, label_font
from archdiff.data.inspect.picks import safe_name, spread
from archdiff.data.samples import expand_samples, prepared_image

MAX_PSNR = 100.0  # identical images have infinite PSNR; capped so means and sorting stay finite
MIN_PSNR = 20.0
DARK = 128  # grey level below which an original pixel counts as line
STILL_DARK = 160  # grey level below which the round-tripped pixel still counts as line
MIN_LINE_SCORE = 0.8
WORST_SHOWN = 4  # unflagged images that get a before/after PNG anyway, worst first
MIN_PANEL = 256  # before/after panels are enlarged (pixel-exact) to at least this width
COMPARISON_SUFFIX = "-vae.png"
TABLE_ROWS = 30


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
    font = label_font()
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
    from archdiff.model.base import resolve_base

    base = resolve_base(base_name)  # a broken base is named before torch and diffusers load

    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

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
