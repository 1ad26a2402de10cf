"""The eval report: report.json round-trips, report.html is well-formed and shows what picks a checkpoint, the printed
table stars the right row, and the chart maths lands points where hand computation says."""

import copy
import json
import re
from html.parser import HTMLParser

import pytest

from archdiff.eval.charts import Box, format_number, line_chart, nice_ticks, scale, segments, step_ticks, value_axis
from archdiff.eval.report import format_table, metric_columns, write_report

GEOMETRY = ("straight_fraction", "upright_fraction", "vertical_error_deg", "horizontal_error_deg")


def _row(name, step, val_loss, clip, fd, kid, geometry=(0.6, 0.9, 0.3, None)):
    return {
        "name": name,
        "step": step,
        "images": 12,
        "val_loss": val_loss,
        "grid": f"grids/{name}.png",
        "clip_score": clip,
        "fd_dino": fd,
        "kid_dino": kid,
        "kid_dino_std": None if kid is None else 0.01,
        "diversity": 0.05,
        "vendi": 1.3,
        **dict(zip(GEOMETRY, geometry, strict=True)),
    }


def _report(best=None):
    """Three checkpoints (given out of order), a base row, nulls at step 200, a held-out reference row."""
    return {
        "run": "runs/demo-tiny",
        "recipe": "demo-tiny",
        "base": "tiny-sd15",
        "created": "2026-11-30T08:10:00+00:00",
        "settings": {
            "num_images": 12,
            "seeds": [0, 1, 2, 3],
            "steps": 20,
            "guidance": 7.5,
            "prompts": 3,
            "metrics": ["clip_score", "fd_dino", "kid_dino", "diversity", "vendi", "geometry"],
            "reference": "held-out",
            "reference_images": 3,
        },
        "metric_models": {
            "clip": {"id": "tiny-clip", "digest": "b1708b1aa7ba3a1bc51a"},
            "dino": {"id": "tiny-dino", "digest": "77c0ffee0123456789ab"},
        },
        "rows": [
            _row("step-000300", 300, 0.31, 23.0, 1.2, 0.031),
            _row("base", None, 0.95, 20.1, 3.2, 0.07, (0.56, 0.86, 0.28, None)),
            _row("step-000100", 100, 0.40, 21.5, 2.1, 0.05),
            _row("step-000200", 200, None, 24.4, None, None),
        ],
        "reference": {
            "name": "held-out",
            "images": 3,
            "grid": "grids/reference.png",
            "clip_score": 25.0,
            **dict(zip(GEOMETRY, (0.6, 0.9, 0.2, 0.5), strict=True)),
        },
        "best": best or {"metric": "fd_dino", "name": "step-000300", "step": 300, "value": 1.2},
    }


class _Page(HTMLParser):
    """Checks tags balance and collects what the tests look at: img srcs, svg count, table rows' cells."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.srcs, self.svgs, self.rows, self.text = [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "svg":
            self.svgs += 1
        if tag == "tr":
            self.rows.append({"class": attrs.get("class"), "cells": []})
        if tag in ("td", "th") and self.rows and "tr" in self.stack:
            self.rows[-1]["cells"].append([attrs.get("class") or "", ""])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th", "strong", "span") and "tr" in self.stack and self.rows:
            self.rows[-1]["cells"][-1][1] += data


def _parse(html):
    page = _Page()
    page.feed(html)
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


def _table(text):
    """The printed table as {row name: {column: cell}} plus the starred names."""
    lines = text.splitlines()
    header = lines[0].split()
    rows, starred = {}, []
    for line in lines[1:-1]:
        if line.startswith("*"):
            line = line[1:]
            starred.append(line.split()[0])
        line = line.replace("held-out (real)", "held-out_(real)")
        cells = line.split()
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows, starred, lines


def test_json_round_trips_and_html_is_written(tmp_path):
    report = _report()
    json_path, html_path = write_report(tmp_path, report)
    assert (json_path, html_path) == (tmp_path / "report.json", tmp_path / "report.html")
    text = json_path.read_text(encoding="utf-8")
    assert json.loads(text) == report
    assert text.startswith('{\n "run": "runs/demo-tiny"')  # indent=1
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no staging files left


def test_a_nan_is_refused_before_anything_is_written(tmp_path):
    report = _report()
    report["rows"][0]["fd_dino"] = float("nan")
    with pytest.raises(ValueError):
        write_report(tmp_path, report)
    assert list(tmp_path.iterdir()) == []


def test_html_is_well_formed_and_shows_rows_grids_charts_and_the_best_row(tmp_path):
    _, html_path = write_report(tmp_path, _report())
    html = html_path.read_text(encoding="utf-8")
    page = _parse(html)
    for name in ("base", "step-000100", "step-000200", "step-000300", "held-out (real)"):
        assert name in html
    # the reference grid first, then base and the checkpoints by step
    assert page.srcs == [
        "grids/reference.png",
        "grids/base.png",
        "grids/step-000100.png",
        "grids/step-000200.png",
        "grids/step-000300.png",
    ]
    assert page.svgs == 1 + len(metric_columns(_report())) == 10  # val_loss and each metric column
    header = next(row for row in page.rows if row["cells"] and row["cells"][0][1] == "name")["cells"]
    labels = [text for _, text in header]
    assert labels[3] == "val loss ↓" and "CLIP score ↑" in labels and "FD (DINOv2) ↓" in labels
    body = {
        row["cells"][0][1].replace("best", "").strip(): row
        for row in page.rows
        if row["cells"][0][0] == "" and row["cells"][0][1] != "name"
    }
    assert [name for name, row in body.items() if row["class"] == "best-row"] == ["step-000300"]
    assert body["held-out (real)"]["class"] == "reference"

    def emphasised(column_label):
        index = labels.index(column_label)
        return [name for name, row in body.items() if "col-best" in row["cells"][index][0]]

    assert emphasised("FD (DINOv2) ↓") == ["step-000300"]
    assert emphasised("CLIP score ↑") == ["step-000200"]  # the reference's 25.0 is a target, not a candidate
    assert emphasised("val loss ↓") == ["step-000300"]
    assert body["step-000200"]["cells"][labels.index("FD (DINOv2) ↓")][1] == "-"
    assert "0.031 ± 0.01" in body["step-000300"]["cells"][labels.index("KID (DINOv2) ↓")][1]
    assert "tiny random demo models" in html and "holds 3" in html and "b1708b1aa7" in html
    assert "2026-11-30 08:10 UTC" in html


def test_html_with_the_base_row_only(tmp_path):
    report = _report({"metric": "fd_dino", "name": "base", "step": None, "value": 3.2})
    report["rows"] = [row for row in report["rows"] if row["name"] == "base"]
    _, html_path = write_report(tmp_path, report)
    page = _parse(html_path.read_text(encoding="utf-8"))
    assert page.svgs == 10 and page.srcs == ["grids/reference.png", "grids/base.png"]
    assert [row["cells"][0][1] for row in page.rows if row["class"] == "best-row"] == ["base best"]


def test_html_escapes_text_and_warns_only_for_tiny_models(tmp_path):
    report = _report()
    report["recipe"], report["base"] = "<b>facades</b>", "sd15"
    report["metric_models"] = {"clip": {"id": "openai/clip-vit-large-patch14", "digest": "abc"}}
    _, html_path = write_report(tmp_path, report)
    html = html_path.read_text(encoding="utf-8")
    _parse(html)
    assert "&lt;b&gt;facades&lt;/b&gt;" in html and "<b>facades</b>" not in html
    assert "This evaluation used tiny random demo models" not in html


def test_table_stars_the_lower_better_best_and_prints_dashes_for_nulls():
    text = format_table(_report())
    rows, starred, lines = _table(text)
    assert starred == ["step-000300"]
    assert list(rows) == ["base", "step-000100", "step-000200", "step-000300", "held-out_(real)"]
    assert lines[0].split()[:4] == ["name", "step", "images", "val_loss"]
    assert rows["step-000200"]["val_loss"] == "-" and rows["step-000200"]["fd_dino"] == "-"
    assert rows["base"]["step"] == "-" and rows["base"]["horiz_err_deg"] == "-"
    assert rows["held-out_(real)"]["images"] == "3" and rows["held-out_(real)"]["clip_score"] == "25"
    assert rows["step-000300"]["kid_dino"] == "0.031"
    assert lines[-1] == "best: step-000300 (fd_dino 1.2, lower is better)"


def test_table_stars_a_higher_better_best():
    best = {"metric": "clip_score", "name": "step-000200", "step": 200, "value": 24.4}
    rows, starred, lines = _table(format_table(_report(best)))
    assert starred == ["step-000200"]
    assert lines[-1] == "best: step-000200 (clip_score 24.4, higher is better)"


def test_table_says_when_the_base_model_scored_best():
    best = {"metric": "fd_dino", "name": "base", "step": None, "value": 3.2}
    rows, starred, lines = _table(format_table(_report(best)))
    assert starred == ["base"]
    assert lines[-1].startswith("best: base (fd_dino 3.2, lower is better)")
    assert "did not help" in lines[-1]


def test_table_without_a_best_or_a_reference():
    report = _report()
    report["best"], report["reference"] = None, None
    rows, starred, lines = _table(format_table(report))
    assert starred == [] and "held-out_(real)" not in rows
    assert lines[-1].startswith("best: none")


def test_format_number():
    assert [format_number(v) for v in (None, 0.031, 20.123, 1234.4, 0.0, 3.0)] == ["-", "0.031", "20.12", "1234", "0", "3"]


def test_scale_and_ticks():
    assert scale(5, 0, 10, 100, 200) == 150
    assert scale(7, 3, 3, 0, 10) == 5  # a zero-width range maps to the middle
    assert nice_ticks(0, 10) == [0, 2.5, 5, 7.5, 10]
    assert nice_ticks(0.03, 0.07) == [0.03, 0.04, 0.05, 0.06, 0.07]
    assert nice_ticks(1.1, 3.9) == [1, 2, 3, 4]
    assert value_axis([5.0, None, 5.0]) == [4.5, 4.75, 5, 5.25, 5.5]  # constant: room around it, no division by zero
    assert value_axis([0.0, 0.0]) == [-1, -0.5, 0, 0.5, 1]
    assert value_axis([None]) == [0.0, 1.0]
    assert step_ticks([100, 200, 300]) == [100, 200, 300]
    assert step_ticks(list(range(100, 1001, 100))) == [100, 300, 500, 700, 1000]


def test_segments_break_at_nulls():
    assert segments([(0, 1), (1, None), (2, 3), (3, 4), (4, None)]) == [[(0, 1)], [(2, 3), (3, 4)]]
    assert segments([(0, None)]) == []


def _circles(svg):
    return [(float(x), float(y), r) for x, y, r in re.findall(r'<circle[^>]*cx="([\d.]+)" cy="([\d.]+)" r="(\d+)"', svg)]


def test_chart_points_land_on_hand_computed_coordinates():
    box = Box()  # plot x from 52 + 10 to 260 - 10, y from 140 (bottom) to 26 (top)
    svg = line_chart("fd", [100, 200, 300], [1.0, None, 3.0], base=2.0, marked_step=300, box=box)
    _parse(svg)
    # ticks 1..3 by 0.5: value 1 at the bottom, 3 at the top; steps 100 and 300 at the inset ends
    assert _circles(svg) == [(62.0, 140.0, "3"), (250.0, 26.0, "5")]  # the marked (best) point is bigger
    assert "<polyline" not in svg  # the null between them is a gap, not a line
    assert '<line class="base" x1="52" y1="83.0" x2="260" y2="83.0"/>' in svg and ">base</text>" in svg
    assert [float(t) for t in re.findall(r'class="tick"[^>]*text-anchor="end">([\d.]+)<', svg)] == [1, 1.5, 2, 2.5, 3]


def test_chart_joins_runs_and_handles_one_point_and_constants():
    svg = line_chart("loss", [0, 100, 200, 300], [1.0, 2.0, None, 4.0])
    assert re.findall(r'points="([^"]*)"', svg) == ["62.0,140.0 124.7,102.0"]  # ticks 1..4 by 1, step 100 at 62 + 188/3
    single = line_chart("loss", [300], [2.0], base=2.0)
    assert _circles(single) == [(156.0, 83.0, "3")]  # one checkpoint: a point in the middle, on the base line
    constant = line_chart("loss", [100, 200], [0.5, 0.5])
    assert [y for _, y, _ in _circles(constant)] == [83.0, 83.0]
    empty = line_chart("loss", [100, 200], [None, None])
    assert "no values" in empty and "<circle" not in empty


def test_report_does_not_change_its_input(tmp_path):
    report = _report()
    before = copy.deepcopy(report)
    write_report(tmp_path, report)
    format_table(report)
    assert report == before
