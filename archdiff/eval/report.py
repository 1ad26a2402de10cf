"""The evaluation report of `archdiff eval`: report.json (the data), report.html (what people read to pick a
checkpoint) and the table printed in the terminal.

The page is self-contained (inline CSS and SVG, grids by relative path, no JavaScript) so it opens from the run folder,
an archive or a file share alike; built with f-strings and `html.escape`, no template engine.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from html import escape
from pathlib import Path

from archdiff.eval.charts import format_number, line_chart
from archdiff.eval.scores import HIGHER_IS_BETTER
from archdiff.run_files import EVAL_REPORT, write_text_atomic

LOWER_IS_BETTER_EXTRA = {"val_loss": False}  # not a metric of scores.py, but a column people compare
LABELS = {
    "val_loss": "val loss",
    "clip_score": "CLIP score",
    "fd_dino": "FD (DINOv2)",
    "kid_dino": "KID (DINOv2)",
    "diversity": "diversity",
    "vendi": "Vendi",
    "straight_fraction": "straight",
    "upright_fraction": "upright",
    "vertical_error_deg": "vertical err °",
    "horizontal_error_deg": "horizontal err °",
    "control_f1": "control F1",
}
TEXT_HEADERS = {  # the terminal table's geometry headers, shortened so the table fits a wide terminal
    "straight_fraction": "straight",
    "upright_fraction": "upright",
    "vertical_error_deg": "vert_err_deg",
    "horizontal_error_deg": "horiz_err_deg",
}
CSS = """
:root { --ink: #1d2330; --muted: #667085; --line: #e4e7ec; --accent: #2f6fde; --best: #fff5d6; --good: #1a7f4b; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  background: #f7f8fa; }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 28px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 12px; }
.muted, .meta { color: var(--muted); } code { font-size: 13px; background: #eef1f5; padding: 1px 5px; border-radius: 4px; }
.warning { background: #fdecea; color: #8a1c12; border: 1px solid #f5c2bc; padding: 8px 12px; border-radius: 6px; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 14px; margin: 12px 0 0; }
dl.settings dt { color: var(--muted); } dl.settings dd { margin: 0; }
.table-wrap { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
thead th { background: #f0f2f5; font-weight: 600; cursor: help; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.col-best strong { color: var(--good); }
tr.best-row { background: var(--best); } tr.best-row th { box-shadow: inset 4px 0 0 #e0a800; }
tr.reference { color: var(--muted); font-style: italic; }
.badge { font-size: 11px; font-style: normal; background: #e0a800; color: #fff; border-radius: 9px; padding: 1px 7px;
  margin-left: 6px; }
.std { color: var(--muted); font-size: 12px; }
.verdict { font-weight: 600; margin: 10px 0 0; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .charts figure { margin: 0; background: #fff;
  border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
.chart text { font: 10px system-ui, sans-serif; fill: var(--muted); } .chart .chart-title { font-size: 12px; fill: var(--ink); }
.chart .grid { stroke: #eef0f3; } .chart .axis { stroke: #98a2b3; }
.chart .base { stroke: #d92d20; stroke-dasharray: 5 4; } .chart .base-label { fill: #d92d20; }
.chart .real { stroke: var(--good); stroke-dasharray: 1 3; stroke-width: 2; } .chart .real-label { fill: var(--good); }
.chart .series { fill: none; stroke: var(--accent); stroke-width: 2; } .chart .point { fill: var(--accent); }
.chart .point.best { fill: #e0a800; stroke: var(--ink); stroke-width: 1.5; }
.grids { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 16px; }
figure.grid { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
figure.grid img { display: block; width: 100%; height: auto; image-rendering: auto; background: #eee; }
figure.grid figcaption { padding: 8px 12px; font-size: 13px; } figure.grid figcaption span { color: var(--muted); }
dl.explain dt { font-weight: 600; margin-top: 10px; } dl.explain dd { margin: 2px 0 0; max-width: 80ch; }
main { padding-bottom: 48px; }
"""


def higher_is_better(column: str) -> bool:
    return {**HIGHER_IS_BETTER, **LOWER_IS_BETTER_EXTRA}[column]


def metric_columns(report: dict) -> list[str]:
    """The metric columns present in any row (the reference included), in a fixed order."""
    rows = [*report["rows"], report.get("reference") or {}]
    return [column for column in HIGHER_IS_BETTER if any(column in row for row in rows)]


def ordered_rows(report: dict) -> list[dict]:
    """Base (no step) first, then the checkpoints by step."""
    return sorted(report["rows"], key=lambda row: (row.get("step") is not None, row.get("step") or 0))


def best_name(report: dict) -> str | None:
    best = report.get("best") or {}
    return best.get("name")


def column_best(rows: list[dict], column: str) -> float | None:
    """The best value of a column over the generated rows (the real reference images are a target, not a candidate)."""
    values = [row[column] for row in rows if row.get(column) is not None]
    if not values:
        return None
    return max(values) if higher_is_better(column) else min(values)


def reference_label(reference: dict) -> str:
    return f"{reference.get('name', 'reference')} (real)"


def best_line(report: dict) -> str:
    """The verdict under the table: which row to pick, by which metric, and a hint when the LoRA did not help."""
    best = report.get("best")
    if not best or best.get("name") is None:
        return "best: none (no row could be scored on the select metric)"
    metric = best.get("metric", "?")
    direction = "higher" if HIGHER_IS_BETTER.get(metric, False) else "lower"
    line = f"best: {best['name']} ({metric} {format_number(best.get('value'))}, {direction} is better)"
    if best.get("step") is None:
        line += "; no checkpoint beat the base model without the LoRA: the LoRA did not help on this metric"
    return line


def format_table(report: dict) -> str:
    """The table printed by `archdiff eval`: base, checkpoints by step, the reference images; best row starred."""
    columns = ["val_loss", *metric_columns(report)]
    header = ["", "name", "step", "images", *(TEXT_HEADERS.get(column, column) for column in columns)]
    chosen = best_name(report)
    lines = []
    for row in ordered_rows(report):
        lines.append(
            [
                "*" if row.get("name") == chosen else "",
                str(row.get("name")),
                format_int(row.get("step")),
                format_int(row.get("images")),
                *(format_number(row.get(column)) for column in columns),
            ]
        )
    reference = report.get("reference")
    if reference:
        lines.append(
            [
                "",
                reference_label(reference),
                "-",
                format_int(reference.get("images")),
                *(format_number(reference.get(column)) for column in columns),
            ]
        )
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        return "  ".join(left + [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]).rstrip()

    return "\n".join([render(header), *(render(cells) for cells in lines), best_line(report)])


def format_int(value: int | None) -> str:
    return "-" if value is None else str(value)


def write_report(eval_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write eval_dir/report.json (indent=1) and eval_dir/report.html, each atomically. Returns (json_path, html_path).

    A NaN or infinity raises rather than write JSON other tools cannot read: score_images turns them into None.
    """
    json_path = eval_dir / EVAL_REPORT
    html_path = json_path.with_suffix(".html")
    write_text_atomic(json_path, json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_text_atomic(html_path, render_html(report))
    return json_path, html_path


def _heading(column: str) -> str:
    arrow, way = ("↑", "higher") if higher_is_better(column) else ("↓", "lower")
    return f'<th class="num" title="{escape(column)}: {way} is better">{escape(LABELS.get(column, column))} {arrow}</th>'


def _cell(row: dict, column: str, best: float | None) -> str:
    value = row.get(column)
    text = format_number(value)
    if column == "kid_dino" and row.get("kid_dino_std") is not None and value is not None:
        text += f' <span class="std">± {format_number(row["kid_dino_std"])}</span>'
    if value is not None and value == best:
        return f'<td class="num col-best"><strong>{text}</strong></td>'
    return f'<td class="num">{text}</td>'


def _table(report: dict, columns: list[str]) -> str:
    rows = ordered_rows(report)
    bests = {column: column_best(rows, column) for column in columns}
    chosen = best_name(report)
    body = []
    for row in rows:
        is_best = row.get("name") == chosen
        name = escape(str(row.get("name")))
        badge = ' <span class="badge">best</span>' if is_best else ""
        cells = "".join(_cell(row, column, bests[column]) for column in columns)
        row_class = ' class="best-row"' if is_best else ""
        body.append(
            f'<tr{row_class}><th scope="row">{name}{badge}</th>'
            f'<td class="num">{format_int(row.get("step"))}</td><td class="num">{format_int(row.get("images"))}</td>'
            f"{cells}</tr>"
        )
    reference = report.get("reference")
    if reference:
        cells = "".join(_cell(reference, column, None) for column in columns)
        body.append(
            f'<tr class="reference"><th scope="row">{escape(reference_label(reference))}</th><td class="num">-</td>'
            f'<td class="num">{format_int(reference.get("images"))}</td>{cells}</tr>'
        )
    head = "".join(_heading(column) for column in columns)
    return (
        f'<table><thead><tr><th>name</th><th class="num">step</th><th class="num">images</th>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table><p class="verdict">{escape(best_line(report))}</p>'
    )


def _charts(report: dict, columns: list[str]) -> str:
    rows = ordered_rows(report)
    checkpoints = [row for row in rows if row.get("step") is not None]
    base = next((row for row in rows if row.get("step") is None), {})
    reference = report.get("reference") or {}
    best = report.get("best") or {}
    steps = [row["step"] for row in checkpoints]
    charts = []
    for column in columns:
        way = "higher" if higher_is_better(column) else "lower"
        title = f"{LABELS.get(column, column)} ({way} is better)"
        charts.append(
            line_chart(
                title,
                steps,
                [row.get(column) for row in checkpoints],
                base=base.get(column),
                marked_step=best.get("step"),
                real=reference.get(column),
            )
        )
    return "".join(f"<figure>{chart}</figure>" for chart in charts)


def _caption_numbers(row: dict, report: dict) -> str:
    select = (report.get("best") or {}).get("metric")
    keys = [key for key in ("val_loss", select, "clip_score") if key and row.get(key) is not None]
    return " · ".join(f"{LABELS.get(key, key)} {format_number(row[key])}" for key in dict.fromkeys(keys))


def _figure(src: str | None, title: str, numbers: str) -> str:
    image = f'<img src="{escape(src)}" alt="{escape(title)}" loading="lazy">' if src else '<p class="muted">no grid</p>'
    detail = f"<br><span>{escape(numbers)}</span>" if numbers else ""
    return f'<figure class="grid">{image}<figcaption><b>{escape(title)}</b>{detail}</figcaption></figure>'


def _grids(report: dict) -> str:
    figures = []
    reference = report.get("reference")
    if reference:
        title = f"real {reference.get('name', 'reference')} images"
        numbers = " · ".join(filter(None, [f"{reference.get('images', '?')} images", _caption_numbers(reference, report)]))
        figures.append(_figure(reference.get("grid"), title, numbers))
    for row in ordered_rows(report):
        title = str(row.get("name")) + (" (best)" if row.get("name") == best_name(report) else "")
        figures.append(_figure(row.get("grid"), title, _caption_numbers(row, report)))
    return "".join(figures)


def _settings(report: dict) -> str:
    s = report.get("settings") or {}
    seeds = s.get("seeds") or []
    items = [
        ("images per checkpoint", f"{s.get('num_images', '?')} ({s.get('prompts', '?')} prompts × {len(seeds)} seeds)"),
        ("seeds", ", ".join(str(seed) for seed in seeds)),
        ("sampling", f"{s.get('steps', '?')} steps, guidance {s.get('guidance', '?')}"),
        ("reference images", f"{s.get('reference', '?')} set, {s.get('reference_images', '?')} images"),
        ("metrics", ", ".join(s.get("metrics") or [])),
    ]
    models = report.get("metric_models") or {}
    if models:
        described = (f"{name}: {m.get('id')} ({str(m.get('digest'))[:10]})" for name, m in models.items())
        items.append(("metric models", ", ".join(described)))
    return "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in items)


def _is_tiny(report: dict) -> bool:
    ids = [str(report.get("base", ""))] + [str(m.get("id", "")) for m in (report.get("metric_models") or {}).values()]
    return any(name.startswith("tiny-") for name in ids)


def _explanations(report: dict) -> str:
    size = (report.get("settings") or {}).get("reference_images", "?")
    return f"""<dl class="explain">
<dt>CLIP score ↑</dt><dd>How well the image matches its prompt (0-100, cosine similarity × 100 in CLIP space).</dd>
<dt>FD / KID (DINOv2) ↓</dt><dd>Distance between the drawn images and the real reference images in DINOv2 feature space:
how close the style and content are to the real set. KID is unbiased at small sizes and shown ± its spread over subsets.
Both are unreliable with few images: this reference set holds {escape(str(size))}, so compare checkpoints with each other,
not with published numbers.</dd>
<dt>diversity ↑</dt><dd>Mean pairwise cosine distance (DINOv2) between the images one caption gave at different seeds;
0 means the same image at every seed (collapse).</dd>
<dt>Vendi ↑</dt><dd>The effective number of distinct images per caption (1 = all alike, up to the number of seeds).</dd>
<dt>geometry</dt><dd><b>straight ↑</b>: share of the edge pixels that lie on long straight lines; <b>upright ↑</b>: share of
the long lines' length within 2° of vertical or horizontal; <b>vertical / horizontal err ↓</b>: mean angle error in degrees
of the near-vertical / near-horizontal long lines (empty when an image has none, as with noise). The real images' row
is the target.</dd>
<dt>control F1 ↑</dt><dd>ControlNet runs: how well the control map extracted from each drawn image (e.g. its edges)
matches the control it was given (1 = exactly).</dd>
<dt>val loss ↓</dt><dd>The training run's validation denoising loss at that checkpoint.</dd>
</dl>
<p>A tiny random demo model (tiny-sd15, tiny-clip, tiny-dino) draws noise: its numbers mean nothing and only show the
pipeline works.</p>"""


TINY_WARNING = (
    '<p class="warning">This evaluation used tiny random demo models: the images are noise and the numbers mean nothing.</p>'
)


def _when(created: str) -> str:
    """The run's ISO timestamp to the minute, 'UTC' spelt out when it is."""
    try:
        moment = datetime.fromisoformat(created)
    except ValueError:
        return created
    if moment.utcoffset() == timedelta(0):
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return moment.isoformat(" ", "minutes")


def render_html(report: dict) -> str:
    """The whole page as one string."""
    has_loss = any(row.get("val_loss") is not None for row in report["rows"])
    columns = ["val_loss"] * has_loss + metric_columns(report)
    recipe = escape(str(report.get("recipe", "?")))
    tiny = TINY_WARNING if _is_tiny(report) else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>archdiff eval: {recipe}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{recipe} <span class="muted">evaluation</span></h1>
<p class="meta">run <code>{escape(str(report.get("run", "?")))}</code> · base <code>{escape(str(report.get("base", "?")))}</code>
 · {escape(_when(str(report.get("created", ""))))}</p>
{tiny}
<dl class="settings">{_settings(report)}</dl>
</header>
<main>
<section><h2>Scores</h2><div class="table-wrap">{_table(report, columns)}</div></section>
<section><h2>Over training</h2><p class="muted">Dashed: the base model without the LoRA; dotted: the real
images; large dot: the selected best checkpoint. Gaps: values that could not be computed.</p>
<div class="charts">{_charts(report, columns)}</div></section>
<section><h2>Images</h2><div class="grids">{_grids(report)}</div></section>
<section><h2>What the numbers mean</h2>{_explanations(report)}</section>
</main>
</body>
</html>
"""
