"""`archdiff push`: upload a run's LoRA or ControlNet, model card, recipe and final samples to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import typer


def push(
    run: Path = typer.Argument(..., help="Run folder of a finished run (the recipe's output, e.g. runs/facade-lora)."),
    repo: str = typer.Option(..., "--repo", help="USER/NAME of the Hub model repo; created if it does not exist."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and write the model card into RUN; upload nothing."),
    new_card: bool = typer.Option(
        False, "--new-card", help="Write a fresh model card even over a RUN/README.md edited by hand (by default it is kept)."
    ),
) -> None:
    """Upload a run's LoRA or ControlNet, card and samples to the Hub.

    Only the LoRA, README.md (the model card), recipe.yaml and the final samples are pushed.
    The token comes from HF_TOKEN or `hf auth login`.
    """
    from archdiff.model_card import CARD_FILE
    from archdiff.push import push_run
    from archdiff.units import human_size

    pushed = push_run(run, repo, private=private, dry_run=dry_run, new_card=new_card)
    if pushed.card_kept:
        typer.echo(f"model card: your edited {run / CARD_FILE}, kept as it is (--new-card writes a fresh one)")
    width = max(len(name) for name, _ in pushed.files)
    for name, path in pushed.files:
        typer.echo(f"{name:<{width}}  {human_size(path.stat().st_size):>9}")
    total = human_size(sum(path.stat().st_size for _, path in pushed.files))
    if pushed.url is None:
        card = "kept" if pushed.card_kept else "written to"
        typer.echo(f"dry run: {len(pushed.files)} files ({total}) would be uploaded; model card {card} {run / CARD_FILE}")
    else:
        typer.echo(f"pushed {len(pushed.files)} files ({total}) to {pushed.url}")
