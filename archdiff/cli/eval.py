"""`archdiff eval`: which checkpoint is good, and did the LoRA help at all?"""

from __future__ import annotations

import time
from pathlib import Path

import typer

METRICS_HELP = (
    "Comma-separated: clip_score, fd_dino, kid_dino, diversity, vendi, geometry, control_f1 (default: the recipe's eval.metrics)."
)


def _numbers(text: str | None, option: str) -> list[int] | None:
    from archdiff.errors import UserError

    if text is None:
        return None
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"{option} takes whole numbers separated by commas, e.g. 0,1,2,3 (got '{text}')") from None


def eval_command(
    run: Path = typer.Argument(..., help="A run folder (what `archdiff train` wrote)."),
    checkpoints: str = typer.Option("all", "--checkpoints", help="all, latest, or steps like 100,200."),
    num_images: int = typer.Option(
        None, "--num-images", "-n", help="Images per checkpoint (default: the recipe's eval.num_images)."
    ),
    metrics: str = typer.Option(None, "--metrics", help=METRICS_HELP),
    seeds: str = typer.Option(
        None, "--seeds", help="Seeds each caption is drawn with, e.g. 0,1,2,3 (default: the recipe's eval.seeds)."
    ),
) -> None:
    """Score every checkpoint and the base, and name the best one.

    Images are drawn from the held-out captions at their sizes and kept under RUN/eval/images, so a second call
    with other metrics draws nothing again. Writes RUN/eval/report.json and RUN/eval/report.html.
    """
    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.eval.report import format_table
    from archdiff.eval.run import EvalOptions, evaluate

    names = [item.strip() for item in metrics.split(",") if item.strip()] if metrics is not None else None
    options = EvalOptions(checkpoints, num_images, names, _numbers(seeds, "--seeds"))
    started = time.perf_counter()
    report, html = evaluate(run, options)
    typer.echo(format_table(report))
    typer.echo(f"images: {report['drawn']} drawn, {report['reused']} reused, in {time.perf_counter() - started:.0f} s")
    typer.echo(f"report: {html}")
