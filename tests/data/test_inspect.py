"""`data inspect` and `data check-vae`: the numbers, the report, the contact sheet and the before/after PNGs."""

import math
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from archdiff.cli import app
from archdiff.config.schema import DataConfig
from archdiff.data.catalog import ImageRecord
from archdiff.data.inspect.labels import GAP
from archdiff.data.inspect.picks import safe_name, spread
from archdiff.data.inspect.sheet import CELL, COLUMNS, ROW_HEIGHT, TITLE_HEIGHT, contact_sheet
from archdiff.data.inspect.stats import (
    ASPECT_LABELS,
    aspect_bin,
    caption_stats,
    draw_histogram,
    find_duplicates,
    format_report,
    inspect_data,
    size_bin,
)
from archdiff.data.inspect.vae_check import MAX_PSNR, line_score, psnr
from archdiff.errors import UserError


def record(name, content_hash, width=64, height=64):
    return ImageRecord(0, 0, name, width, height, "photo", content_hash, {})


def histogram_rows(text, title):
    """{label: count} of the histogram printed under `title` in a report."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[start:] if line.startswith("  ")][: len(ASPECT_LABELS)]
    return {row[0]: int(row[1]) for row in rows}


def test_aspect_bins_are_symmetric_and_include_their_upper_edge():
    sizes = [(100, 100), (384, 256), (256, 384), (400, 300), (200, 100), (301, 100), (90, 300)]
    assert {size: ASPECT_LABELS[aspect_bin(*size)] for size in sizes} == {
        (100, 100): "~1:1",
        (384, 256): "4:3 - 2:1",
        (256, 384): "1:2 - 3:4",
        (400, 300): "~1:1",
        (200, 100): "4:3 - 2:1",
        (301, 100): "> 3:1",
        (90, 300): "< 1:3",
    }


def test_size_bins_follow_the_long_side():
    assert [size_bin(w, h) for w, h in [(100, 255), (256, 10), (300, 511), (512, 512), (5000, 20)]] == [0, 1, 1, 2, 6]


def test_histogram_bars_scale_to_the_largest_count():
    lines = draw_histogram([("small", 1), ("large", 80), ("none", 0)])
    assert lines == [f"  small   1  {'#'}", f"  large  80  {'#' * 40}", "  none    0"]


def test_duplicates_are_found_by_content_hash_not_name():
    records = [record("a.png", "h1"), record("copy of a.png", "h1"), record("b.png", "h2"), record("a.png", "h3")]
    assert find_duplicates(records) == [["a.png", "copy of a.png"]]


def test_caption_stats_estimate_clip_overflow():
    stats = caption_stats(["one two three", "", " ".join(["word"] * 60)])
    assert (stats.min_words, stats.median_words, stats.max_words, stats.over_clip, stats.empty) == (0, 3, 60, 1, 1)


def test_psnr_and_line_score_on_synthetic_pairs():
    plan = Image.new("RGB", (32, 32), "white")
    plan.paste((0, 0, 0), (4, 10, 28, 12))  # a 2-px wall
    blank = Image.new("RGB", (32, 32), "white")
    assert psnr(plan, plan) == MAX_PSNR and line_score(plan, plan) == 1.0
    assert line_score(plan, blank) == 0.0
    assert line_score(blank, blank) == 1.0  # no lines to lose
    assert line_score(blank, plan) == 0.0, "ink where the drawing had none"
    smear = Image.new("RGB", (32, 32), "black")
    assert line_score(plan, smear) == pytest.approx(2 * 48 / (48 + 1024)), "keeping every line inside a smear is no success"
    grey = Image.fromarray(np.full((32, 32, 3), 101, np.uint8))
    assert psnr(grey, Image.fromarray(np.full((32, 32, 3), 100, np.uint8))) == pytest.approx(10 * math.log10(255**2))
    assert psnr(Image.new("RGB", (8, 8), "black"), Image.new("RGB", (8, 8), "white")) == 0.0
    faded = Image.fromarray(np.where(np.asarray(plan) == 0, 150, 255).astype(np.uint8))  # lines grey but still visible
    assert line_score(plan, faded) == 1.0


def test_spread_and_safe_name():
    assert spread(3, 9) == [0, 3, 6]
    assert spread(5, 3) == [0, 1, 2]
    assert safe_name("owner/some set") == "owner-some-set"


def test_bundled_sets_report(tmp_path):
    report = inspect_data(DataConfig(sources=[{"path": "facades"}, {"path": "plans", "repeats": 2}]))
    text = format_report(report)
    assert "images: 64 found, 64 usable, 0 skipped" in text
    assert "kinds: 32 drawing, 32 photo" in text
    assert "duplicates: none" in text
    assert "one epoch of 96 samples" in text  # plans count twice
    assert "64 of 64 images are smaller than their bucket" in text  # 256-384 px images at 512
    aspect = histogram_rows(text, "aspect ratio (width:height):")
    assert {label: count for label, count in aspect.items() if count} == {"1:2 - 3:4": 6, "~1:1": 32, "4:3 - 2:1": 26}
    assert histogram_rows(text, "long side:")["256-511 px"] == 64


def test_folder_with_a_duplicate_and_a_broken_file(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, colour in [("red.png", "red"), ("blue.png", "blue")]:
        Image.new("RGB", (96, 64), colour).save(folder / name)
    (folder / "red copy.png").write_bytes((folder / "red.png").read_bytes())
    (folder / "broken.png").write_bytes((folder / "blue.png").read_bytes()[:60])
    for image in folder.glob("*.png"):
        image.with_suffix(".txt").write_text(f"a plain {image.stem} wall")
    text = format_report(inspect_data(DataConfig(sources=[{"path": str(folder)}])))
    assert "images: 4 found, 3 usable, 1 skipped" in text
    assert "  skipped broken.png: truncated" in text
    assert "  red copy.png = red.png" in text or "  red.png = red copy.png" in text
    assert "captions: 4-5 words (median 4)" in text


def test_nasty_folder_report_names_every_broken_file(nasty_folder):
    folder, described = nasty_folder
    report = inspect_data(DataConfig(sources=[{"path": str(folder)}]))
    text = format_report(report)
    for name in described["broken"]:
        assert f"  skipped {name}: " in text
    assert f"{len(described['valid'])} usable, {len(described['broken'])} skipped" in text
    assert f"{len(described['drawings'])} drawing" in text


def test_contact_sheet_layout_and_content(tmp_path):
    report = inspect_data(DataConfig(sources=[{"path": "plans"}]))
    path = contact_sheet(report, tmp_path / "deep" / "sheet.png", count=8)
    sheet = np.asarray(Image.open(path).convert("L"))
    assert sheet.shape == (TITLE_HEIGHT + 2 * ROW_HEIGHT, COLUMNS * CELL + (COLUMNS + 1) * GAP)
    first_cell = sheet[TITLE_HEIGHT : TITLE_HEIGHT + CELL, GAP : GAP + CELL]
    assert (first_cell < 128).mean() > 0.01  # plan lines
    assert (sheet[:TITLE_HEIGHT] < 128).any()  # the title
    assert (sheet[TITLE_HEIGHT + CELL : TITLE_HEIGHT + ROW_HEIGHT - GAP, GAP : GAP + CELL] < 128).any()  # the label


def test_inspect_command(tmp_path):
    sheet = tmp_path / "sheet.png"
    args = ["data", "inspect", "facades", "--recipe", "demo-tiny", "--output", str(sheet), "--sheet-size", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "buckets at 64 px" in result.output
    assert f"contact sheet: {sheet}" in result.output
    assert Image.open(sheet).size == (3 * CELL + 4 * GAP, TITLE_HEIGHT + ROW_HEIGHT)


def test_inspect_command_refuses_a_missing_folder(tmp_path):
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, UserError)


def test_check_vae_command_with_the_tiny_model(tiny_base, tmp_path):
    output = tmp_path / "vae"
    output.mkdir()
    (output / "stale-vae.png").write_bytes(b"from an earlier check")
    args = ["data", "check-vae", "plans", "--base", "tiny-sd15", "--recipe", "demo-tiny", "--output", str(output), "--limit", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("plan_")]
    # a random VAE reproduces nothing: noise, and no drawing's lines
    assert len(rows) == 3 and all(row.endswith("PSNR < 20 dB, line score < 0.8") for row in rows)
    assert "flagged: 3 of 3" in result.output
    pngs = sorted(output.glob("*-vae.png"))
    assert [p.name for p in pngs] == ["plan_000-vae.png", "plan_010-vae.png", "plan_021-vae.png"]
    assert f"before/after PNGs: 3 in {output}" in result.output
    assert Image.open(pngs[1]).width == 2 * 256 + 3 * GAP  # plan_010's 64x64 bucket, enlarged to 256-px panels
