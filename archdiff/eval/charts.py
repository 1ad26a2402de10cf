"""Small inline SVG line charts for the eval report: one metric over the checkpoint steps, no plotting library.

Pure string building, so the page needs no JavaScript and no dependency; the maths is split out to be testable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Box:
    """The chart's size and the margins around its plot area, in SVG user units (px)."""

    width: float = 300.0
    height: float = 170.0
    left: float = 52.0
    right: float = 40.0
    top: float = 26.0
    bottom: float = 30.0
    inset: float = 10.0  # between the plot's sides and the first / last step, so end points clear the axis labels

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:  # the plot's bottom edge: SVG y grows downwards
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top


def format_number(value: float | None) -> str:
    """3-4 significant digits, '-' for a missing value; large values whole (FD in real DINOv2 space runs to thousands)."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, target: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] in steps of 1, 2, 2.5 or 5 times a power of ten; lo < hi."""
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def value_axis(values: Sequence[float | None]) -> list[float]:
    """The y ticks for these values (Nones ignored): their ends bound the axis; a constant series gets room around it."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0, 1.0]
    lo, hi = min(present), max(present)
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    return nice_ticks(lo, hi)


def scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    """Map value from [lo, hi] linearly onto [out_lo, out_hi]; a zero-width input range maps to the middle."""
    if hi == lo:
        return (out_lo + out_hi) / 2
    return out_lo + (value - lo) / (hi - lo) * (out_hi - out_lo)


def segments(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points with a value: a None ends a run, so the line shows a gap there."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def step_ticks(steps: Sequence[int], most: int = 6) -> list[int]:
    """The steps to label on the x axis: all of them when few, else evenly picked ones, always the last."""
    if len(steps) <= most:
        return list(steps)
    stride = math.ceil(len(steps) / most)
    picked = list(steps[::stride])
    if picked[-1] != steps[-1]:
        picked[-1] = steps[-1]
    return picked


def _xy(x: float, y: float) -> str:
    return f"{x:.1f},{y:.1f}"


def line_chart(
    title: str,
    steps: Sequence[int],
    values: Sequence[float | None],
    base: float | None = None,
    marked_step: int | None = None,
    real: float | None = None,
    box: Box = Box(),
) -> str:
    """One metric over the checkpoint steps as an <svg>: dots joined by lines (gaps at None), the base model's value
    as a dashed line labelled "base", the real images' value (a target, e.g. for geometry) as a dotted one labelled
    "real", and the `marked_step` checkpoint (the selected best) ringed."""
    ticks = value_axis([*values, base, real])
    lo, hi = ticks[0], ticks[-1]
    first, last = (min(steps), max(steps)) if steps else (0, 0)

    def x_at(step: float) -> float:
        return scale(step, first, last, box.x0 + box.inset, box.x1 - box.inset)

    def y_at(value: float) -> float:
        return scale(value, lo, hi, box.y0, box.y1)

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {box.width:g} {box.height:g}" '
        f'width="{box.width:g}" height="{box.height:g}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{box.x0:g}" y="{box.top - 10:g}">{escape(title)}</text>',
    ]
    for tick in ticks:
        y = y_at(tick)
        parts.append(f'<line class="grid" x1="{box.x0:g}" y1="{y:.1f}" x2="{box.x1:g}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{box.x0 - 6:g}" y="{y + 3.5:.1f}" text-anchor="end">{format_number(tick)}</text>')
    for step in step_ticks(list(steps)):
        x = x_at(step)
        parts.append(f'<line class="axis" x1="{x:.1f}" y1="{box.y0:g}" x2="{x:.1f}" y2="{box.y0 + 4:g}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{box.y0 + 16:g}" text-anchor="middle">{step}</text>')
    parts.append(f'<line class="axis" x1="{box.x0:g}" y1="{box.y0:g}" x2="{box.x1:g}" y2="{box.y0:g}"/>')
    parts.append(f'<text class="tick" x="{box.x1 + 4:g}" y="{box.y0 + 16:g}">step</text>')
    label_y = None
    for name, level in (("base", base), ("real", real)):
        if level is None:
            continue
        y = y_at(level)
        text_y = y + 3.5 if label_y is None or abs(y + 3.5 - label_y) >= 10 else label_y + 10
        label_y = text_y
        parts.append(f'<line class="{name}" x1="{box.x0:g}" y1="{y:.1f}" x2="{box.x1:g}" y2="{y:.1f}"/>')
        parts.append(f'<text class="{name}-label" x="{box.x1 + 4:g}" y="{text_y:.1f}">{name}</text>')
    points = [(x_at(step), None if value is None else y_at(value)) for step, value in zip(steps, values, strict=True)]
    for run in segments(points):
        if len(run) > 1:
            parts.append(f'<polyline class="series" points="{" ".join(_xy(x, y) for x, y in run)}"/>')
    for step, value, (x, y) in zip(steps, values, points, strict=True):
        if y is None:
            continue
        marked = step == marked_step
        parts.append(
            f'<circle class="{"point best" if marked else "point"}" cx="{x:.1f}" cy="{y:.1f}" r="{5 if marked else 3}">'
            f"<title>step {step}: {format_number(value)}</title></circle>"
        )
    if all(value is None for value in (*values, base, real)):
        parts.append(
            f'<text class="tick" x="{(box.x0 + box.x1) / 2:g}" y="{(box.y0 + box.y1) / 2:g}" '
            'text-anchor="middle">no values</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
