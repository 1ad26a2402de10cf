"""`archdiff train`: run a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from archdiff.cli import options


def train(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (recipes/NAME.yaml) or path to a YAML file."),
    base: str = options.BASE,
    data: str = typer.Option(
        None, "--data", help="Bundled set or manifest name (archdiff data list), local image folder, or Hub dataset id."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder (default: the recipe's output)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    set_: list[str] = options.SET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an earlier run in the output folder."),
) -> None:
    """Fine-tune a LoRA on the recipe's base model and data."""
    from archdiff.config import load_recipe

    shortcuts = {
        "base": base,
        "data.sources": [{"path": data}] if data else None,
        "output": str(output) if output else None,
        "train.max_steps": max_steps,
    }
    overrides = [*set_, *(f"{key}={json.dumps(value)}" for key, value in shortcuts.items() if value is not None)]
    resolved = load_recipe(recipe, overrides)

    from archdiff.runtime import quiet_libraries

    quiet_libraries()
    from archdiff.train.loop import Interrupted
    from archdiff.train.run import run

    try:
        result = run(resolved, overwrite=overwrite)
    except Interrupted as stop:
        typer.echo(f"\narchdiff: interrupted at step {stop.step}; the LoRA so far is in {resolved.output}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"done: {resolved.train.max_steps} steps at {result.steps_per_second:.1f} steps/s")
    if result.first_val_loss is not None and result.final_val_loss is not None:
        ratio = result.final_val_loss / result.first_val_loss
        typer.echo(
            f"held-out loss: {result.first_val_loss:.4f} -> {result.final_val_loss:.4f} ({ratio:.2f}x the untrained model's)"
        )
    typer.echo(f"LoRA:    {result.lora_file}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    if result.sample_files:
        typer.echo(f"samples: {result.sample_files[0].parent.parent}")
    typer.echo(f'next:    archdiff sample "timber house in mountains" --lora {result.run_dir}')
