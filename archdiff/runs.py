"""Read a run folder back: how far training got, how the losses went, what is on disk, and a loss chart.

Works on finished, stopped and still-running runs alike; stdlib + yaml here, PIL only inside the chart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from archdiff.errors import UserError
from archdiff.run_files import (
    BLANK_CONTROL_LOSS,
    EVAL_DIR,
    EVAL_REPORT,
    METRICS_FILE,
    RECIPE_FILE,
    MetricsLog,
    checkpoint_step,
    complete_checkpoints,
)
from archdiff.units import human_duration, human_size

FINAL_LOSS_WINDOW = 5  # one logged loss is noisy; the mean of the last few says where training ended


@dataclass
class RunSummary:
    run_dir: Path
    name: str
    base: str | None
    max_steps: int | None  # None: no recipe.yaml to say
    steps_done: int | None  # the last logged step; None: nothing logged yet
    first_val_loss: float | None
    best_val_loss: float | None
    best_val_step: int | None
    last_val_loss: float | None
    final_loss: float | None
    elapsed: float | None  # seconds of training, summed over resumed sessions; None: not logged
    checkpoints: list[int] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    controlnet: str | None = None  # a ControlNet run's control type and what it trained; None for a LoRA run
    last_blank_control_loss: float | None = None  # a ControlNet run's last val_loss with its controls blanked
    last_scores: dict[str, float] = field(default_factory=dict)  # validation.metrics' last val_* columns, by name
    evaluation: str | None = None  # `archdiff eval`'s verdict, when the run has a report

    @property
    def finished(self) -> bool:
        return self.max_steps is not None and self.steps_done is not None and self.steps_done >= self.max_steps


def summarize(run_dir: Path) -> RunSummary:
    """Everything `archdiff runs show` prints, read from the run folder alone (no model, no torch)."""
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist")
    metrics_path, recipe_path = run_dir / METRICS_FILE, run_dir / RECIPE_FILE
    if not metrics_path.is_file() and not recipe_path.is_file():
        raise UserError(f"'{run_dir}' is not a run folder: it has no {METRICS_FILE} and no {RECIPE_FILE}")
    recipe = read_recipe(recipe_path) if recipe_path.is_file() else {}
    rows = read_metrics(run_dir)
    losses = [row["loss"] for row in rows if row.get("loss") is not None]
    val = [(row["step"], row["val_loss"]) for row in rows if row.get("val_loss") is not None]
    best = min(val, key=lambda pair: pair[1]) if val else None
    max_steps = (recipe.get("train") or {}).get("max_steps")
    return RunSummary(
        run_dir=run_dir,
        name=recipe.get("name") or run_dir.name,
        base=recipe.get("base"),
        max_steps=max_steps,
        steps_done=rows[-1]["step"] if rows else None,
        first_val_loss=val[0][1] if val else None,
        best_val_loss=best[1] if best else None,
        best_val_step=best[0] if best else None,
        last_val_loss=val[-1][1] if val else None,
        final_loss=sum(losses[-FINAL_LOSS_WINDOW:]) / len(losses[-FINAL_LOSS_WINDOW:]) if losses else None,
        elapsed=_training_seconds(rows),
        checkpoints=[checkpoint_step(c) for c in complete_checkpoints(run_dir)],
        last_blank_control_loss=next(
            (row[BLANK_CONTROL_LOSS] for row in reversed(rows) if row.get(BLANK_CONTROL_LOSS) is not None), None
        ),
        files={entry.name: _disk_size(entry) for entry in sorted(run_dir.iterdir())},
        controlnet=_controlnet_line(recipe),
        last_scores=_last_scores(rows),
        evaluation=_evaluation_line(run_dir),
    )


def _last_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each `validation.metrics` column (val_clip_score, ...; val_loss has its own line)."""
    scores: dict[str, float] = {}
    for row in rows:
        scores |= {
            k: v for k, v in row.items() if k.startswith("val_") and k not in ("val_loss", BLANK_CONTROL_LOSS) and v is not None
        }
    return scores


def _evaluation_line(run_dir: Path) -> str | None:
    """The best row of RUN/eval/report.json, if `archdiff eval` ran; an unreadable report is said, not fatal."""
    import json

    path = run_dir / EVAL_DIR / EVAL_REPORT
    if not path.is_file():
        return None
    try:
        best = json.loads(path.read_text(encoding="utf-8")).get("best") or {}
        return f"best {best['name']} by {best['metric']} ({best['value']:.4g}), report {path.with_suffix('.html')}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path} is unreadable or names no best; run `archdiff eval {run_dir}` again"


def _controlnet_line(recipe: dict[str, Any]) -> str | None:
    """A ControlNet run in a few words: the control map it takes (what `sample --control-type` must make) and what trained."""
    net = recipe.get("controlnet")
    if not net:
        return None
    control = (recipe.get("data") or {}).get("control")
    kind = control.get("type", "none") if isinstance(control, dict) else "unknown"
    line = (
        f"{kind} control, scale {net.get('scale', 1.0)}, " + ("a LoRA on it" if net.get("lora") else "all weights") + " trained"
    )
    if net.get("unet_lora"):
        line += ", with a UNet LoRA"
    return line + (f", over the style LoRA {net['style_lora']}" if net.get("style_lora") else "")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The logged rows, oldest first; a run that has logged nothing yet has none, a killed run's cut last line is
    dropped, and a damaged line elsewhere is a UserError naming it (MetricsLog.read)."""
    return MetricsLog.read_if_exists(run_dir / METRICS_FILE)


RECIPE_SECTIONS = ("data", "train", "lora", "validation", "dreambooth", "controlnet", "memory", "hub")


def read_recipe(path: Path) -> dict[str, Any]:
    """A run folder's recipe.yaml as a mapping whose sections are mappings; anything else is one line naming the file."""
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise UserError(f"{path} is not valid YAML ({reason}); it may be truncated or edited by hand") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path} does not hold a recipe (a YAML mapping); it may be truncated or edited by hand")
    for section in RECIPE_SECTIONS:
        if recipe.get(section) is not None and not isinstance(recipe[section], dict):
            raise UserError(f"{path}: '{section}' is not a mapping of settings; it may be truncated or edited by hand")
    return recipe


def _training_seconds(rows: list[dict[str, Any]]) -> float | None:
    """`elapsed` restarts at 0 in each resumed session, so the total is the sum of each session's last value."""
    times = [row["elapsed"] for row in rows if row.get("elapsed") is not None]
    if not times:
        return None
    total = sum(before for before, after in pairwise(times) if after < before)
    return total + times[-1]


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def format_summary(s: RunSummary) -> str:
    """The summary as aligned `label  value` lines, ending with what to do next if the run is not finished."""
    lines: list[tuple[str, str]] = [("run", f"{s.name} ({s.run_dir})"), ("base", s.base or "unknown (no recipe.yaml)")]
    if s.controlnet:
        lines.append(("controlnet", s.controlnet))
    recipe = s.run_dir / RECIPE_FILE
    if s.steps_done is None:
        lines.append(("status", f"no metrics logged yet (nothing in {METRICS_FILE})"))
    elif s.max_steps is None:
        lines.append(("status", f"step {s.steps_done} logged; no {RECIPE_FILE}, so max_steps is unknown"))
    elif s.finished:
        lines.append(("status", f"finished: {s.steps_done} of {s.max_steps} steps"))
    elif s.checkpoints:
        stopped = f"stopped at step {s.steps_done} of {s.max_steps}"
        lines.append(("status", f"{stopped} (last checkpoint: {s.checkpoints[-1]}) — resume with:"))
        lines.append(("", f"archdiff train --recipe {recipe} --resume latest -o {s.run_dir}"))
    else:
        stopped = f"stopped at step {s.steps_done} of {s.max_steps}"
        lines.append(("status", f"{stopped}, no checkpoint to resume from — start over with:"))
        lines.append(("", f"archdiff train --recipe {recipe} -o {s.run_dir} --overwrite"))
    if s.elapsed is not None:
        rate = f" ({s.steps_done / s.elapsed:.2f} steps/s)" if s.elapsed > 0 and s.steps_done else ""
        lines.append(("time", human_duration(s.elapsed) + rate))
    if s.final_loss is not None:
        lines.append(("loss", f"{s.final_loss:.4f} (mean of up to the last {FINAL_LOSS_WINDOW} logged)"))
    if s.first_val_loss is not None:
        ratio = f" ({s.best_val_loss / s.first_val_loss:.2f}x the first)" if s.first_val_loss else ""
        best = f"best {s.best_val_loss:.4f} at step {s.best_val_step}{ratio}"
        lines.append(("val_loss", f"first {s.first_val_loss:.4f}, {best}, last {s.last_val_loss:.4f}"))
    if s.last_blank_control_loss is not None and s.last_val_loss is not None:
        gain = round(1 - s.last_val_loss / s.last_blank_control_loss, 4) + 0.0  # no "-0.00%"
        lines.append(("blank control", f"last {s.last_blank_control_loss:.4f} (the control lowers val_loss by {gain:.2%})"))
    if s.last_scores:
        lines.append(
            ("val metrics", ", ".join(f"{name.removeprefix('val_')} {value:.4g}" for name, value in s.last_scores.items()))
        )
    if s.checkpoints:
        lines.append(("checkpoints", ", ".join(str(step) for step in s.checkpoints)))
    if s.evaluation:
        lines.append(("eval", s.evaluation))
    width = max(len(label) for label, _ in lines)
    out = [f"{label:<{width}}  {value}" for label, value in lines]
    size_width = max((len(human_size(size)) for size in s.files.values()), default=0)
    out.append("files")
    out += [f"  {human_size(size):>{size_width}}  {name}" for name, size in s.files.items()]
    return "\n".join(out)


# Chart layout (pixels) and colours.
WIDTH, HEIGHT = 900, 500
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 56, 60
LOSS_LIGHT, LOSS_MEAN, VAL = (166, 196, 232), (31, 90, 168), (214, 96, 31)
GRID, AXIS, TEXT = (228, 228, 228), (90, 90, 90), (30, 30, 30)


def _ticks(low: float, high: float, count: int, min_step: float = 0.0) -> tuple[list[float], int]:
    """About `count` round values (1, 2 or 5 times a power of ten apart, at least min_step) within [low, high],
    and the decimals their labels need."""
    raw = (high - low) / (count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), min_step)
    first = math.ceil(low / step - 1e-9)
    ticks = [i * step for i in range(first, math.floor(high / step + 1e-9) + 1)]
    return ticks, max(0, -math.floor(math.log10(step)))


def _moving_average(values: list[float], window: int) -> list[float]:
    """Centred mean (shorter at the ends): unlike a trailing mean it does not lag behind a falling loss."""
    half = window // 2
    means = []
    for i in range(len(values)):
        near = values[max(0, i - half) : i + half + 1]
        means.append(sum(near) / len(near))
    return means


def plot_losses(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """A PNG line chart of training loss (raw and smoothed) and val_loss against step, drawn with PIL alone."""
    from PIL import Image, ImageDraw, ImageFont

    train = [(row["step"], row["loss"]) for row in rows if row.get("loss") is not None]
    val = [(row["step"], row["val_loss"]) for row in rows if row.get("val_loss") is not None]
    if not train and not val:
        raise UserError("no loss or val_loss logged yet: nothing to plot")
    points = train + val
    x_low, x_high = 0, max(max(step for step, _ in points), 1)
    y_low, y_high = min(v for _, v in points), max(v for _, v in points)
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 0.05  # a flat line still gets a range
    y_low, y_high = min(y_low, max(0.0, y_low - pad)), y_high + pad  # no room below 0 unless the data goes there

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small, bold = ImageFont.load_default(size=14), ImageFont.load_default(size=12), ImageFont.load_default(size=18)
    plot_right, plot_bottom = WIDTH - RIGHT, HEIGHT - BOTTOM

    def to_xy(step: float, value: float) -> tuple[float, float]:
        x = LEFT + (step - x_low) / (x_high - x_low) * (plot_right - LEFT)
        y = plot_bottom - (value - y_low) / (y_high - y_low) * (plot_bottom - TOP)
        return x, y

    y_ticks, decimals = _ticks(y_low, y_high, count=10)
    for tick in y_ticks:
        _, y = to_xy(x_low, tick)
        draw.line([(LEFT, y), (plot_right, y)], fill=GRID)
        draw.text((LEFT - 8, y), f"{tick:.{decimals}f}", fill=TEXT, font=small, anchor="rm")
    for tick in _ticks(x_low, x_high, count=8, min_step=1)[0]:
        x, _ = to_xy(tick, y_low)
        draw.line([(x, TOP), (x, plot_bottom)], fill=GRID)
        draw.text((x, plot_bottom + 8), f"{tick:.0f}", fill=TEXT, font=small, anchor="mt")
    draw.rectangle([LEFT, TOP, plot_right, plot_bottom], outline=AXIS)
    draw.text((WIDTH / 2, 18), title, fill=TEXT, font=bold, anchor="mt")
    draw.text(((LEFT + plot_right) / 2, HEIGHT - 14), "step", fill=TEXT, font=font, anchor="mb")
    draw.text((22, (TOP + plot_bottom) / 2), "loss", fill=TEXT, font=font, anchor="mm")

    legend: list[tuple[str, tuple[int, int, int], int, bool]] = []  # label, colour, line width, marker
    if train:
        window = max(3, 2 * (len(train) // 30) + 1)  # odd, so each mean is centred on its point
        smooth = _moving_average([v for _, v in train], window)
        raw_width = 2 if len(train) < 200 else 1  # a dense thick line would hide the average
        if len(train) > 1:
            draw.line([to_xy(*p) for p in train], fill=LOSS_LIGHT, width=raw_width)
            draw.line(
                [to_xy(step, v) for (step, _), v in zip(train, smooth, strict=True)], fill=LOSS_MEAN, width=3, joint="curve"
            )
        else:
            x, y = to_xy(*train[0])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=LOSS_MEAN)
        legend += [("training loss", LOSS_LIGHT, raw_width, False), (f"moving average ({window} logs)", LOSS_MEAN, 3, False)]
    if val:
        if len(val) > 1:
            draw.line([to_xy(*p) for p in val], fill=VAL, width=2)
        for point in val:
            x, y = to_xy(*point)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=VAL, outline="white")
        legend.append(("val_loss (held out)", VAL, 2, True))

    row_height, swatch = 20, 26
    box_width = swatch + 14 + max(draw.textlength(label, font=font) for label, *_ in legend)
    box_left, box_top = plot_right - 12 - box_width, TOP + 12
    draw.rectangle([box_left, box_top, plot_right - 12, box_top + row_height * len(legend) + 8], fill="white", outline=GRID)
    for i, (label, colour, line_width, marker) in enumerate(legend):
        y = box_top + 14 + i * row_height
        draw.line([(box_left + 8, y), (box_left + 8 + swatch, y)], fill=colour, width=line_width)
        if marker:
            centre = box_left + 8 + swatch / 2
            draw.ellipse([centre - 4, y - 4, centre + 4, y + 4], fill=colour, outline="white")
        draw.text((box_left + swatch + 14, y), label, fill=TEXT, font=font, anchor="lm")

    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
