"""`archdiff runs show`: how far a run got and how its losses went, from the run folder alone (no torch)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Look at training runs.", no_args_is_help=True)


@app.command("show")
def show(
    run: Path = typer.Argument(..., help="Run folder (the recipe's output, e.g. runs/demo-tiny)."),
    plot: Path = typer.Option(None, "--plot", help="Also write a PNG chart of loss and val_loss by step to this path."),
) -> None:
    """Summarize a run: steps, losses, time, checkpoints and files.

    Works on finished, stopped and still-running runs.
    """
    from archdiff.outputs import IMAGE_SUFFIXES, check_output
    from archdiff.runs import format_summary, plot_losses, read_metrics, summarize

    if plot is not None:
        check_output(plot, "--plot", folder=False, suffixes=IMAGE_SUFFIXES)
    summary = summarize(run)
    chart = plot_losses(read_metrics(run), plot, f"{summary.name}: loss by step") if plot else None
    typer.echo(format_summary(summary))
    if chart:
        typer.echo(f"plot: {chart}")
